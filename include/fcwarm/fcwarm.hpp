/// \file
/// \brief Umbrella header: the whole public API of libfcwarm.
#pragma once

#include "fcwarm/backends.hpp"
#include "fcwarm/container_manager.hpp"
#include "fcwarm/firecracker_vmm.hpp"
#include "fcwarm/health_tracker.hpp"
#include "fcwarm/ids.hpp"
#include "fcwarm/image_registry.hpp"
#include "fcwarm/options.hpp"
#include "fcwarm/qemu_vmm.hpp"
#include "fcwarm/restore_engine.hpp"
#include "fcwarm/service.hpp"
#include "fcwarm/snapshot_manager.hpp"
#include "fcwarm/status.hpp"
#include "fcwarm/store.hpp"
#include "fcwarm/types.hpp"
#include "fcwarm/version.hpp"
#include "fcwarm/vmm.hpp"
