#include "store/sql.hpp"

#include "util/common.hpp"

namespace fcwarm::detail {

void Decode(const SQLite::Column& c, std::string& out) { out = c.getString(); }
void Decode(const SQLite::Column& c, int& out) { out = c.getInt(); }
void Decode(const SQLite::Column& c, int64_t& out) { out = c.getInt64(); }
void Decode(const SQLite::Column& c, uint32_t& out) { out = static_cast<uint32_t>(c.getInt()); }
void Decode(const SQLite::Column& c, uint64_t& out) { out = static_cast<uint64_t>(c.getInt64()); }
void Decode(const SQLite::Column& c, bool& out) { out = c.getInt() != 0; }

void Decode(const SQLite::Column& c, std::optional<int>& out) {
  out = c.isNull() ? std::nullopt : std::optional<int>(c.getInt());
}

void Decode(const SQLite::Column& c, std::optional<int64_t>& out) {
  out = c.isNull() ? std::nullopt : std::optional<int64_t>(c.getInt64());
}

void Decode(const SQLite::Column& c, Timings& out) { out = util::TimingsFromJson(c.getString()); }

void Decode(const SQLite::Column& c, std::map<std::string, std::string>& out) {
  out = util::StringMapFromJson(c.getString());
}

void Decode(const SQLite::Column& c, std::vector<SnapshotFile>& out) {
  out = util::FilesFromJson(c.getString());
}

void Decode(const SQLite::Column& c, std::vector<ParkedContainer>& out) {
  out = util::ParkedFromJson(c.getString());
}

void Decode(const SQLite::Column& c, std::vector<std::string>& out) {
  out = util::StringListFromJson(c.getString());
}

void Decode(const SQLite::Column& c, RuntimeCheck& out) { out = util::RuntimeCheckFromJson(c.getString()); }

}  // namespace fcwarm::detail
