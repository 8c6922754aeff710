// Private: typed access to the `runtime_images` table. Caller holds the lock (StoreDb::With/Tx).
#pragma once

#include <SQLiteCpp/SQLiteCpp.h>

#include <cstdint>
#include <string>
#include <vector>

#include "fcwarm/status.hpp"
#include "fcwarm/types.hpp"

namespace fcwarm::detail {

/// The image with this id; NotFound.
Result<RuntimeImage> ImageById(SQLite::Database& db, const std::string& id);
/// The image with this name; NotFound.
Result<RuntimeImage> ImageByName(SQLite::Database& db, const std::string& name);
/// Every image, newest first.
std::vector<RuntimeImage> ListImages(SQLite::Database& db);
/// True when an image has this name.
bool ImageNameTaken(SQLite::Database& db, const std::string& name);
/// Inserts a complete image record (id and created_at set).
void InsertImage(SQLite::Database& db, const RuntimeImage& image);
/// Deletes an image record (its snapshots cascade).
void DeleteImage(SQLite::Database& db, const std::string& id);

}  // namespace fcwarm::detail
