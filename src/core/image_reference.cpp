#include "fcwarm/image_reference.hpp"

#include <cctype>

#include "net/ports.hpp"

namespace fcwarm {
namespace {

constexpr size_t kMaxNameLength = 255;  // distribution/reference's NameTotalLengthMax
constexpr size_t kMaxTagLength = 128;
constexpr size_t kMaxInput = 1024;      // longest text looked at: name + tag + the longest digest fit easily

bool LowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool Alnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }
bool Hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

// One path component: alnum runs joined by ".", "_", "__" or any number of "-". Empty: ok; else why not.
std::string CheckPathComponent(std::string_view c) {
  if (c.empty()) return "an empty path component (leading, trailing or double '/')";
  for (char ch : c) {
    if (ch >= 'A' && ch <= 'Z') return "repository names must be lower case";
  }
  if (!LowerAlnum(c.front()) || !LowerAlnum(c.back())) {
    return "path component '" + std::string(c.substr(0, 64)) + "' must start and end with a letter or digit";
  }
  size_t i = 0;
  while (i < c.size()) {
    if (LowerAlnum(c[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < c.size() && !LowerAlnum(c[j])) ++j;
    std::string_view sep = c.substr(i, j - i);
    bool ok = sep == "." || sep == "_" || sep == "__" || sep.find_first_not_of('-') == std::string_view::npos;
    if (!ok) return "'" + std::string(sep) + "' is not a separator (use '.', '_', '__' or dashes)";
    i = j;
  }
  return "";
}

// host[:port]: dot-separated labels of letters, digits and inner dashes.
std::string CheckDomain(std::string_view d) {
  std::string_view host = d;
  if (auto colon = d.rfind(':'); colon != std::string_view::npos) {
    host = d.substr(0, colon);
    auto port = net::ParsePortNumber(d.substr(colon + 1, 16), "registry port", "");
    if (!port.ok()) return std::string(port.status().message());
  }
  if (host.empty()) return "the registry host is empty";
  size_t start = 0;
  while (start <= host.size()) {
    size_t dot = host.find('.', start);
    std::string_view label = host.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty()) return "the registry host has an empty label";
    if (!Alnum(label.front()) || !Alnum(label.back())) return "registry host labels start and end with a letter or digit";
    for (char ch : label) {
      if (!Alnum(ch) && ch != '-') return "the registry host contains '" + std::string(1, ch) + "'";
    }
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return "";
}

std::string CheckDigest(std::string_view d) {
  auto colon = d.find(':');
  if (colon == std::string_view::npos) return "a digest is 'algorithm:hex'";
  std::string_view alg = d.substr(0, colon);
  std::string_view hex = d.substr(colon + 1);
  size_t want = alg == "sha256" ? 64 : alg == "sha384" ? 96 : alg == "sha512" ? 128 : 0;
  if (want == 0) return "digest algorithm '" + std::string(alg.substr(0, 16)) + "' is not sha256, sha384 or sha512";
  for (char ch : hex) {
    if (!Hex(ch)) return "a " + std::string(alg) + " digest is lower-case hex";
  }
  if (hex.size() != want) {
    return "a " + std::string(alg) + " digest has " + std::to_string(want) + " hex digits, not " +
           std::to_string(hex.size());
  }
  return "";
}

std::string CheckTag(std::string_view t) {
  if (t.empty()) return "the tag after ':' is empty";
  if (t.size() > kMaxTagLength) return "the tag is longer than 128 characters";
  auto word = [](char c) { return Alnum(c) || c == '_'; };
  if (!word(t.front())) return "the tag must start with a letter, digit or '_'";
  for (char c : t) {
    if (!word(c) && c != '.' && c != '-') return "the tag contains '" + std::string(1, c) + "'";
  }
  return "";
}

}  // namespace

std::string ImageReference::str() const {
  std::string s = domain.empty() ? path : domain + "/" + path;
  if (!tag.empty()) s += ":" + tag;
  if (!digest.empty()) s += "@" + digest;
  return s;
}

std::string ImageReference::Normalized() const {
  std::string d = domain.empty() ? "docker.io" : domain;
  std::string p = (d == "docker.io" && path.find('/') == std::string::npos) ? "library/" + path : path;
  std::string s = d + "/" + p;
  if (!tag.empty()) s += ":" + tag;
  if (tag.empty() && digest.empty()) s += ":latest";
  if (!digest.empty()) s += "@" + digest;
  return s;
}

Result<ImageReference> ParseImageReference(std::string_view text, std::string_view field) {
  const std::string f(field);
  if (text.empty()) return Status::InvalidArgument(f + ": is required (an image reference such as nginx:alpine)");
  if (text.size() > kMaxInput) {
    return Status::InvalidArgument(f + ": " + std::to_string(text.size()) + " characters is too long for an image reference");
  }
  auto bad = [&](const std::string& why) {
    std::string shown(text.substr(0, 64));
    for (char& c : shown) {
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
    }
    return Status::InvalidArgument(f + ": '" + shown + (text.size() > 64 ? "...'" : "'") +
                                   " is not a valid image reference: " + why);
  };
  for (char c : text) {
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      return bad("it contains a space or a non-printable character");
    }
  }
  ImageReference ref;
  std::string_view rest = text;
  if (auto at = rest.find('@'); at != std::string_view::npos) {
    if (auto why = CheckDigest(rest.substr(at + 1)); !why.empty()) return bad(why);
    ref.digest = std::string(rest.substr(at + 1));
    rest = rest.substr(0, at);
  }
  auto last_slash = rest.rfind('/');
  auto colon = rest.rfind(':');
  if (colon != std::string_view::npos && (last_slash == std::string_view::npos || colon > last_slash)) {
    if (auto why = CheckTag(rest.substr(colon + 1)); !why.empty()) return bad(why);
    ref.tag = std::string(rest.substr(colon + 1));
    rest = rest.substr(0, colon);
  }
  if (rest.empty()) return bad("the repository name is empty");
  if (rest.size() > kMaxNameLength) return bad("the name is longer than 255 characters");
  std::string_view path = rest;
  if (auto slash = rest.find('/'); slash != std::string_view::npos) {
    std::string_view first = rest.substr(0, slash);
    bool is_domain = first.find_first_of(".:") != std::string_view::npos || first == "localhost";
    for (char c : first) is_domain = is_domain || (c >= 'A' && c <= 'Z');
    if (is_domain) {
      if (auto why = CheckDomain(first); !why.empty()) return bad(why);
      ref.domain = std::string(first);
      path = rest.substr(slash + 1);
    }
  }
  size_t start = 0;
  while (true) {
    size_t slash = path.find('/', start);
    auto comp = path.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (auto why = CheckPathComponent(comp); !why.empty()) return bad(why);
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  ref.path = std::string(path);
  return ref;
}

}  // namespace fcwarm
