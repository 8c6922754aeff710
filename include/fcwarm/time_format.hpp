/// \file
/// \brief Times as the REST API shows them: RFC 3339 in UTC, whole seconds ("2026-01-27T10:00:00Z").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "fcwarm/status.hpp"

namespace fcwarm {

/// \brief Formats Unix milliseconds as RFC 3339 UTC with whole seconds, e.g. "2026-01-27T10:00:00Z" (the
/// form `jq fromdate` reads; sub-second parts are dropped).
std::string FormatRfc3339(int64_t unix_ms);

/// \brief Parses "YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)" into Unix milliseconds.
/// \return The time; InvalidArgument naming `field` when the text is not such a time.
Result<int64_t> ParseRfc3339(std::string_view text, std::string_view field);

}  // namespace fcwarm
