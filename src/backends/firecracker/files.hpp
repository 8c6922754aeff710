// Private: file helpers of the Firecracker backend (sparse/reflink copies, links, socket probes).
#pragma once

#include <string>

#include "fcwarm/status.hpp"

namespace fcwarm::firecracker {

/// Copies `src` to `dst` (replacing it): a reflink (FICLONE) when the filesystem supports it, otherwise a
/// sparse-aware copy (holes stay holes).
Status CopyFileSparse(const std::string& src, const std::string& dst);

/// Hard-links `src` at `dst`, or copies when a link is impossible (other filesystem).
Status LinkOrCopy(const std::string& src, const std::string& dst);

/// Moves `src` to `dst`: rename, or copy + unlink across filesystems.
Status MoveFile(const std::string& src, const std::string& dst);

/// True when a Unix stream socket at `path` accepts a connection.
bool SocketAccepts(const std::string& path);

/// Removes a file if present; never fails.
void RemoveQuietly(const std::string& path);

/// The last `lines` lines of a text file (at most 2 KiB), or empty.
std::string TailOf(const std::string& path, int lines = 3);

}  // namespace fcwarm::firecracker
