// Private helpers shared by the core: time, hashing, files, JSON encoding of small maps.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"

namespace fcwarm::util {

/// Wall clock, Unix milliseconds.
int64_t NowMillis();

/// Milliseconds elapsed since `start` (steady clock), as a double.
double MsSince(std::chrono::steady_clock::time_point start);

/// XXH3-128 of a byte string, 32 lower-case hex digits.
std::string Xxh3Hex(std::string_view data);
/// XXH3-128 of a file's contents.
Result<std::string> Xxh3File(const std::filesystem::path& path);

/// True for the errno values of a full file system or an exhausted quota (ENOSPC, EDQUOT).
bool IsNoSpace(int err);
/// The Status of a failed file-system call: "<what>: <strerror(err)>", with code ResourceExhausted when the
/// file system is full (IsNoSpace; docs/operations.md, "Disk full"), else `otherwise`.
Status ErrnoStatus(int err, const std::string& what, StatusCode otherwise = StatusCode::kUnavailable);
/// True when a tool's or QEMU's error text reports a full file system ("No space left on device", "Disk quota
/// exceeded"): how the backends tell ENOSPC in a child process from other failures.
bool MentionsNoSpace(std::string_view text);

/// Writes a file durably: write to `<path>.tmp`, fsync, rename, fsync the directory. A full file system is
/// ResourceExhausted and leaves no `.tmp` file.
Status WriteFileDurable(const std::filesystem::path& path, std::string_view data);
/// Reads a whole file (at most `max_bytes`).
Result<std::string> ReadFile(const std::filesystem::path& path, size_t max_bytes = 16u << 20);
/// fsync a file or a directory by path.
Status FsyncPath(const std::filesystem::path& path);
/// An anonymous in-memory file (memfd, close-on-exec) holding `text`, for a child that reads it by the path
/// /proc/<pid>/fd/<fd> (batch input without a shell or a temp file). The caller closes the descriptor.
Result<int> MemfdWithText(const char* name, const std::string& text);
/// Creates a directory and its parents.
Status MakeDirs(const std::filesystem::path& path);
/// Removes a tree; never throws; returns bytes freed (allocated size).
uint64_t RemoveTree(const std::filesystem::path& path);
/// Sum of allocated bytes (st_blocks*512) and of apparent sizes under a path.
void DiskUsage(const std::filesystem::path& path, uint64_t* apparent, uint64_t* allocated);
/// mtime in nanoseconds.
int64_t MtimeNs(const std::filesystem::path& path);

/// JSON encodings used in the store.
std::string TimingsToJson(const Timings& t);
Timings TimingsFromJson(std::string_view s);
std::string StringMapToJson(const std::map<std::string, std::string>& m);
std::map<std::string, std::string> StringMapFromJson(std::string_view s);
std::string FilesToJson(const std::vector<SnapshotFile>& files);
std::vector<SnapshotFile> FilesFromJson(std::string_view s);
// Parked containers as stored (runtime_snapshots.parked) and in manifest.json.
std::string ParkedToJson(const std::vector<ParkedContainer>& parked);
std::vector<ParkedContainer> ParkedFromJson(std::string_view s);
std::string StringListToJson(const std::vector<std::string>& v);
std::vector<std::string> StringListFromJson(std::string_view s);
std::string RuntimeCheckToJson(const RuntimeCheck& c);
RuntimeCheck RuntimeCheckFromJson(std::string_view s);

/// True when `child` is inside `root` after normalisation (no escape through "..").
bool IsWithin(const std::filesystem::path& root, const std::filesystem::path& child);

}  // namespace fcwarm::util
