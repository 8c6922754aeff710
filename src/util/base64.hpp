// Private: base64 (RFC 4648, standard alphabet, padded) for the host side: the guest protocol's *_b64 fields and
// etcd's JSON gateway, which carries keys and values so.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace fcwarm::util {

/// Encodes `in` with padding.
std::string Base64Encode(std::string_view in);
/// Decodes padded base64 strictly: nullopt unless `in` is a whole number of 4-character groups of the alphabet,
/// with '=' only in the last one or two places of the last group.
std::optional<std::string> Base64Decode(std::string_view in);
/// The value (0-63) of a base64 character, or -1.
int Base64Value(char c);

}  // namespace fcwarm::util
