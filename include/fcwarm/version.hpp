/// \file
/// \brief Library version.
#pragma once

#include <string_view>

namespace fcwarm {

/// \brief The library version, "major.minor.patch".
std::string_view Version();

}  // namespace fcwarm
