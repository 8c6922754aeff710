// Boost.JSON compiled into the agent (header-only mode), so the static binary needs no Boost shared library.
// This is the only translation unit that includes src.hpp; nothing linking fcwarm_agent_core may also link
// Boost::json.
#include <boost/json/src.hpp>
