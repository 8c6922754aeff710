// Private: what keeps the store's statements short and typed. Parameters bind by position in one call (an
// enum binds as its stable name, so no state name is spelled in SQL); rows are read column by name through a
// RowMap, which also renders the SELECT list, so the list and the reader cannot drift apart.
//
// Every function here runs inside StoreDb::With/Tx (the caller holds the connection lock); SQLite errors
// are exceptions that With/Tx turn into a Status.
#pragma once

#include <SQLiteCpp/SQLiteCpp.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "fcwarm/container_manager.hpp"
#include "fcwarm/types.hpp"

namespace fcwarm::detail {

/// Bytes bound as a BLOB (a string binds as TEXT).
struct Blob {
  std::string_view bytes;
};

template <typename T>
struct IsOptional : std::false_type {};
template <typename T>
struct IsOptional<std::optional<T>> : std::true_type {};

/// Binds one parameter: integers as INTEGER, enums as their ToString() name, std::nullopt as NULL.
template <typename T>
void BindOne(SQLite::Statement& q, int index, const T& value) {
  if constexpr (IsOptional<T>::value) {
    if (value) {
      BindOne(q, index, *value);
    } else {
      q.bind(index);
    }
  } else if constexpr (std::is_enum_v<T>) {
    q.bind(index, std::string(ToString(value)));
  } else if constexpr (std::is_integral_v<T>) {
    q.bind(index, static_cast<int64_t>(value));
  } else if constexpr (std::is_floating_point_v<T>) {
    q.bind(index, static_cast<double>(value));
  } else if constexpr (std::is_same_v<T, Blob>) {
    q.bind(index, value.bytes.data(), static_cast<int>(value.bytes.size()));
  } else {
    q.bind(index, std::string(value));
  }
}

/// Binds `args` to the parameters ?1, ?2, ... in order.
template <typename... Args>
void Bind(SQLite::Statement& q, const Args&... args) {
  int index = 0;
  (BindOne(q, ++index, args), ...);
}

/// Runs a statement that returns no rows; returns the number of rows it changed.
template <typename... Args>
int Exec(SQLite::Database& db, const std::string& sql, const Args&... args) {
  SQLite::Statement q(db, sql);
  Bind(q, args...);
  return q.exec();
}

/// True when the query returns a row.
template <typename... Args>
bool Exists(SQLite::Database& db, const std::string& sql, const Args&... args) {
  SQLite::Statement q(db, sql);
  Bind(q, args...);
  return q.executeStep();
}

/// The integer in column `column` of the query's first row, or nullopt when it returns no row.
template <typename... Args>
std::optional<int64_t> QueryInt(SQLite::Database& db, const std::string& sql, const char* column,
                                const Args&... args) {
  SQLite::Statement q(db, sql);
  Bind(q, args...);
  if (!q.executeStep()) return std::nullopt;
  return q.getColumn(column).getInt64();
}

// Decoders from a column into a field, chosen by the field's type. JSON-encoded fields (timings, string maps,
// file lists, argv, runtime checks) are decoded leniently, as they were written by this library.
void Decode(const SQLite::Column& c, std::string& out);
void Decode(const SQLite::Column& c, int& out);
void Decode(const SQLite::Column& c, int64_t& out);
void Decode(const SQLite::Column& c, uint32_t& out);
void Decode(const SQLite::Column& c, uint64_t& out);
void Decode(const SQLite::Column& c, bool& out);
void Decode(const SQLite::Column& c, std::optional<int>& out);
void Decode(const SQLite::Column& c, std::optional<int64_t>& out);
void Decode(const SQLite::Column& c, Timings& out);
void Decode(const SQLite::Column& c, std::map<std::string, std::string>& out);
void Decode(const SQLite::Column& c, std::vector<SnapshotFile>& out);
void Decode(const SQLite::Column& c, std::vector<ParkedContainer>& out);
void Decode(const SQLite::Column& c, std::vector<std::string>& out);
void Decode(const SQLite::Column& c, RuntimeCheck& out);

// Enum parsers by type, for the enum decoder below.
inline Result<SnapshotState> ParseName(std::string_view s, SnapshotState*) { return ParseSnapshotState(s); }
inline Result<BuildPhase> ParseName(std::string_view s, BuildPhase*) { return ParseBuildPhase(s); }
inline Result<BootMethod> ParseName(std::string_view s, BootMethod*) { return ParseBootMethod(s); }
inline Result<FallbackReason> ParseName(std::string_view s, FallbackReason*) {
  return ParseFallbackReason(s);
}
inline Result<VmState> ParseName(std::string_view s, VmState*) { return ParseVmState(s); }
inline Result<ContainerState> ParseName(std::string_view s, ContainerState*) {
  return ParseContainerState(s);
}
inline Result<EventKind> ParseName(std::string_view s, EventKind*) { return ParseEventKind(s); }

/// An enum stored by name; an unknown name leaves `out` unchanged.
template <typename E>
requires std::is_enum_v<E>
void Decode(const SQLite::Column& c, E& out) {
  auto v = ParseName(c.getString(), static_cast<E*>(nullptr));
  if (v.ok()) out = *v;
}

/// One column of a RowMap: its SELECT expression ("name" or "expr AS name") and how it lands in the row.
template <typename Row>
struct ColumnOf {
  std::string select;
  std::function<void(const SQLite::Column&, Row&)> decode;
};

/// A column read into `member`.
template <typename Row, typename M>
ColumnOf<Row> Col(std::string select, M Row::*member) {
  return {std::move(select), [member](const SQLite::Column& c, Row& r) { Decode(c, r.*member); }};
}

/// A column read into `member` of the row's part `part` (a record nested in a wider row).
template <typename Row, typename Part, typename M>
ColumnOf<Row> Col(std::string select, Part Row::*part, M Part::*member) {
  return {std::move(select),
          [part, member](const SQLite::Column& c, Row& r) { Decode(c, (r.*part).*member); }};
}

/// An enum column; an unknown name reads as `fallback`.
template <typename Row, typename E>
requires std::is_enum_v<E> ColumnOf<Row> EnumCol(std::string select, E Row::*member, E fallback) {
  return {std::move(select), [member, fallback](const SQLite::Column& c, Row& r) {
            r.*member = fallback;
            Decode(c, r.*member);
          }};
}

/// An enum column of a nested part; an unknown name reads as `fallback`.
template <typename Row, typename Part, typename E>
requires std::is_enum_v<E> ColumnOf<Row> EnumCol(std::string select, Part Row::*part, E Part::*member,
                                                 E fallback) {
  return {std::move(select), [part, member, fallback](const SQLite::Column& c, Row& r) {
            (r.*part).*member = fallback;
            Decode(c, (r.*part).*member);
          }};
}

/// How one kind of row is selected and read: every column by name.
template <typename Row>
class RowMap {
 public:
  RowMap(std::initializer_list<ColumnOf<Row>> columns) {
    for (const auto& c : columns) {
      auto as = c.select.rfind(" AS ");
      names_.push_back(as == std::string::npos ? c.select : c.select.substr(as + 4));
      decoders_.push_back(c.decode);
      list_ += (list_.empty() ? "" : ", ") + c.select;
    }
  }

  /// The SELECT list, "a, b, expr AS c".
  const std::string& columns() const { return list_; }

  /// Reads the statement's current row.
  Row Read(const SQLite::Statement& q) const {
    Row r;
    for (size_t i = 0; i < names_.size(); ++i) decoders_[i](q.getColumn(names_[i].c_str()), r);
    return r;
  }

  /// Runs "SELECT <columns> <from_and_rest>" and reads every row.
  template <typename... Args>
  std::vector<Row> All(SQLite::Database& db, const std::string& from_and_rest, const Args&... args) const {
    SQLite::Statement q(db, "SELECT " + list_ + " " + from_and_rest);
    Bind(q, args...);
    std::vector<Row> out;
    while (q.executeStep()) out.push_back(Read(q));
    return out;
  }

  /// Like All() for at most one row.
  template <typename... Args>
  std::optional<Row> One(SQLite::Database& db, const std::string& from_and_rest, const Args&... args) const {
    SQLite::Statement q(db, "SELECT " + list_ + " " + from_and_rest);
    Bind(q, args...);
    if (!q.executeStep()) return std::nullopt;
    return Read(q);
  }

 private:
  std::vector<std::string> names_;
  std::vector<std::function<void(const SQLite::Column&, Row&)>> decoders_;
  std::string list_;
};

}  // namespace fcwarm::detail
