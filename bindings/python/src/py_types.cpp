// Value types, enums, options and the Store.
#include "fcwarm/image_reference.hpp"
#include "fcwarm/time_format.hpp"
#include "py_common.hpp"

namespace fcwarm::py {

namespace {
std::string Repr(const std::string& type, const std::string& id, const std::string& extra) {
  return "<fcwarm." + type + " " + id + (extra.empty() ? "" : " " + extra) + ">";
}
}  // namespace

void BindTypes(pyb::module_& m) {
  pyb::enum_<SnapshotState> state(m, "SnapshotState", "Lifecycle state of a runtime snapshot.");
  state.value("CREATING", SnapshotState::kCreating)
      .value("READY", SnapshotState::kReady)
      .value("UNHEALTHY", SnapshotState::kUnhealthy)
      .value("DELETED", SnapshotState::kDeleted);
  AddStr(state);
  pyb::enum_<BuildPhase> phase(m, "BuildPhase", "Progress of a snapshot build.");
  phase.value("QUEUED", BuildPhase::kQueued)
      .value("FETCHING", BuildPhase::kFetching)
      .value("BOOTING", BuildPhase::kBooting)
      .value("WAITING_RUNTIME", BuildPhase::kWaitingRuntime)
      .value("PRELOADING", BuildPhase::kPreloading)
      .value("PARKING", BuildPhase::kParking)
      .value("QUIESCING", BuildPhase::kQuiescing)
      .value("PAUSING", BuildPhase::kPausing)
      .value("SNAPSHOTTING", BuildPhase::kSnapshotting)
      .value("VERIFYING", BuildPhase::kVerifying)
      .value("PUBLISHING", BuildPhase::kPublishing)
      .value("DONE", BuildPhase::kDone);
  AddStr(phase);
  pyb::enum_<BootMethod> method(m, "BootMethod", "How a VM was started.");
  method.value("WARM", BootMethod::kWarm).value("COLD", BootMethod::kCold);
  AddStr(method);
  pyb::enum_<FallbackReason> reason(m, "FallbackReason", "Why a VM was cold-booted instead of restored.");
  reason.value("NONE", FallbackReason::kNone)
      .value("NO_SNAPSHOT", FallbackReason::kNoSnapshot)
      .value("SNAPSHOT_CREATING", FallbackReason::kSnapshotCreating)
      .value("SNAPSHOT_UNHEALTHY", FallbackReason::kSnapshotUnhealthy)
      .value("INCOMPATIBLE", FallbackReason::kIncompatible)
      .value("CORRUPT", FallbackReason::kCorrupt)
      .value("RESTORE_FAILED", FallbackReason::kRestoreFailed)
      .value("VERIFY_FAILED", FallbackReason::kVerifyFailed);
  AddStr(reason);
  pyb::enum_<VmState> vmstate(m, "VmState", "Lifecycle of a VM record.");
  vmstate.value("STARTING", VmState::kStarting)
      .value("RUNNING", VmState::kRunning)
      .value("STOPPED", VmState::kStopped)
      .value("DESTROYED", VmState::kDestroyed)
      .value("FAILED", VmState::kFailed)
      .value("LOST", VmState::kLost)
      .value("POOLED", VmState::kPooled);
  AddStr(vmstate);

  m.def("is_valid_id", &Id::IsValid, pyb::arg("text"), "True when text is a valid fcwarm id (UUID v4).");
  m.def("generate_id", [] { return Id::Generate().str(); }, "A fresh random id.");
  m.def("format_rfc3339", &FormatRfc3339, pyb::arg("unix_ms"),
        "Unix milliseconds as the REST API shows times: RFC 3339 UTC, whole seconds (\"2026-01-27T10:00:00Z\").");
  m.def(
      "parse_image_reference",
      [](const std::string& text) {
        auto r = Unwrap(ParseImageReference(text, "image"));
        pyb::dict d;
        d["domain"] = r.domain;
        d["path"] = r.path;
        d["tag"] = r.tag;
        d["digest"] = r.digest;
        d["normalized"] = r.Normalized();
        return d;
      },
      pyb::arg("text"),
      "Parses a container image reference (Docker's grammar) into {domain, path, tag, digest, normalized}; "
      "InvalidArgumentError says what is wrong.");
  m.def("validate_name", [](const std::string& field, const std::string& name) { Check(ValidateName(field, name)); },
        pyb::arg("field"), pyb::arg("name"), "Raises InvalidArgumentError unless name is a valid object name.");

  pyb::class_<RuntimeCheck>(m, "RuntimeCheck", "How the runtime inside a guest is judged ready.")
      .def(pyb::init([](std::string kind, std::string path, std::vector<std::string> argv) {
             return RuntimeCheck{std::move(kind), std::move(path), std::move(argv)};
           }),
           pyb::arg("kind") = "none", pyb::arg("path") = "", pyb::arg("argv") = std::vector<std::string>{})
      .def_readwrite("kind", &RuntimeCheck::kind)
      .def_readwrite("path", &RuntimeCheck::path)
      .def_readwrite("argv", &RuntimeCheck::argv);

  pyb::class_<VmShape>(m, "VmShape", "vCPUs and memory of a VM.")
      .def(pyb::init([](uint32_t vcpus, uint32_t memory_mib) { return VmShape{vcpus, memory_mib}; }),
           pyb::arg("vcpus") = 1, pyb::arg("memory_mib") = 512)
      .def_readwrite("vcpus", &VmShape::vcpus)
      .def_readwrite("memory_mib", &VmShape::memory_mib);

  pyb::class_<RuntimeImage>(m, "RuntimeImage",
                            "What a VM boots: kernel, initrd/rootfs, shape, runtime check, backend.")
      .def(pyb::init([](std::string name, std::string backend, std::string kernel_path,
                        std::string initrd_path, std::string rootfs_path, std::string boot_args,
                        uint32_t vcpus, uint32_t memory_mib, RuntimeCheck check,
                        std::vector<std::string> preload_images) {
             RuntimeImage i;
             i.name = std::move(name);
             i.backend = std::move(backend);
             i.kernel_path = std::move(kernel_path);
             i.initrd_path = std::move(initrd_path);
             i.rootfs_path = std::move(rootfs_path);
             i.boot_args = std::move(boot_args);
             i.shape = {vcpus, memory_mib};
             i.runtime_check = std::move(check);
             i.preload_images = std::move(preload_images);
             return i;
           }),
           pyb::arg("name") = "", pyb::arg("backend") = "", pyb::arg("kernel_path") = "",
           pyb::arg("initrd_path") = "", pyb::arg("rootfs_path") = "", pyb::arg("boot_args") = "",
           pyb::arg("vcpus") = 1, pyb::arg("memory_mib") = 512, pyb::arg("runtime_check") = RuntimeCheck{},
           pyb::arg("preload_images") = std::vector<std::string>{})
      .def_readonly("id", &RuntimeImage::id)
      .def_readwrite("name", &RuntimeImage::name)
      .def_readwrite("backend", &RuntimeImage::backend)
      .def_readwrite("kernel_path", &RuntimeImage::kernel_path)
      .def_readwrite("initrd_path", &RuntimeImage::initrd_path)
      .def_readwrite("rootfs_path", &RuntimeImage::rootfs_path)
      .def_readwrite("boot_args", &RuntimeImage::boot_args)
      .def_readwrite("shape", &RuntimeImage::shape)
      .def_readwrite("runtime_check", &RuntimeImage::runtime_check)
      .def_readwrite("preload_images", &RuntimeImage::preload_images)
      .def_readonly("created_at", &RuntimeImage::created_at)
      .def_property_readonly("path", &RuntimeImage::path)
      .def("__repr__", [](const RuntimeImage& i) { return Repr("RuntimeImage", i.id, i.name); });

  pyb::class_<SnapshotFile>(m, "SnapshotFile", "One file of a snapshot generation.")
      .def_readonly("name", &SnapshotFile::name)
      .def_readonly("size", &SnapshotFile::size)
      .def_readonly("mtime_ns", &SnapshotFile::mtime_ns)
      .def_readonly("xxh3", &SnapshotFile::xxh3);

  pyb::class_<ParkedContainer>(m, "ParkedContainer", "A container a snapshot holds started, waiting for a command.")
      .def_readonly("name", &ParkedContainer::name)
      .def_readonly("docker_id", &ParkedContainer::docker_id)
      .def_readonly("image", &ParkedContainer::image)
      .def_readonly("channel", &ParkedContainer::channel)
      .def_readonly("entrypoint", &ParkedContainer::entrypoint)
      .def_readonly("cmd", &ParkedContainer::cmd)
      .def_readonly("env", &ParkedContainer::env)
      .def_readonly("working_dir", &ParkedContainer::working_dir)
      .def_readonly("user", &ParkedContainer::user)
      .def("__repr__", [](const ParkedContainer& p) { return "<fcwarm.ParkedContainer " + p.name + " " + p.image + ">"; });

  pyb::class_<RuntimeSnapshot>(m, "RuntimeSnapshot", "A runtime snapshot with its state, health and files.")
      .def_readonly("id", &RuntimeSnapshot::id)
      .def_readonly("runtime_image_id", &RuntimeSnapshot::runtime_image_id)
      .def_readonly("state", &RuntimeSnapshot::state)
      .def_readonly("phase", &RuntimeSnapshot::phase)
      .def_readonly("generation", &RuntimeSnapshot::generation)
      .def_readonly("generation_dir", &RuntimeSnapshot::generation_dir)
      .def_readonly("compatibility_key", &RuntimeSnapshot::compatibility_key)
      .def_readonly("compatibility", &RuntimeSnapshot::compatibility)
      .def_readonly("size_bytes", &RuntimeSnapshot::size_bytes)
      .def_readonly("disk_bytes", &RuntimeSnapshot::disk_bytes)
      .def_readonly("files", &RuntimeSnapshot::files)
      .def_readonly("manifest_digest", &RuntimeSnapshot::manifest_digest)
      .def_readonly("origin", &RuntimeSnapshot::origin)
      .def_readonly("images", &RuntimeSnapshot::images)
      .def_readonly("parked", &RuntimeSnapshot::parked, "Parked containers of the current generation.")
      .def_readonly("success_count", &RuntimeSnapshot::success_count)
      .def_readonly("failure_count", &RuntimeSnapshot::failure_count)
      .def_readonly("consecutive_failures", &RuntimeSnapshot::consecutive_failures)
      .def_readonly("build_failures", &RuntimeSnapshot::build_failures)
      .def_readonly("last_error", &RuntimeSnapshot::last_error)
      .def_readonly("created_at", &RuntimeSnapshot::created_at)
      .def_readonly("updated_at", &RuntimeSnapshot::updated_at)
      .def_readonly("last_used_at", &RuntimeSnapshot::last_used_at)
      .def("__repr__", [](const RuntimeSnapshot& s) {
        return Repr("RuntimeSnapshot", s.id, std::string(ToString(s.state)) + "/" + std::string(ToString(s.phase)));
      });

  pyb::class_<VmRecord>(m, "VmRecord", "A VM and how it was started.")
      .def_readonly("id", &VmRecord::id)
      .def_readonly("name", &VmRecord::name)
      .def_readonly("runtime_image_id", &VmRecord::runtime_image_id)
      .def_readonly("snapshot_id", &VmRecord::snapshot_id)
      .def_readonly("generation", &VmRecord::generation)
      .def_readonly("state", &VmRecord::state)
      .def_readonly("boot_method", &VmRecord::boot_method)
      .def_readonly("fallback_reason", &VmRecord::fallback_reason)
      .def_readonly("timings", &VmRecord::timings)
      .def_readonly("work_dir", &VmRecord::work_dir)
      .def_readonly("address", &VmRecord::address)
      .def_readonly("mac", &VmRecord::mac)
      .def_readonly("hostname", &VmRecord::hostname)
      .def_readonly("last_error", &VmRecord::last_error)
      .def_readonly("pooled", &VmRecord::pooled)
      .def_readonly("instance_id", &VmRecord::instance_id)
      .def_readonly("created_at", &VmRecord::created_at)
      .def_readonly("updated_at", &VmRecord::updated_at)
      .def("__repr__", [](const VmRecord& v) {
        return Repr("VmRecord", v.id, std::string(ToString(v.state)) + " " + std::string(ToString(v.boot_method)));
      });

  pyb::class_<Event>(m, "Event", "An entry of the event log.")
      .def_readonly("id", &Event::id)
      .def_readonly("time", &Event::time)
      .def_property_readonly("kind", [](const Event& e) { return std::string(ToString(e.kind)); })
      .def_readonly("runtime_image_id", &Event::runtime_image_id)
      .def_readonly("snapshot_id", &Event::snapshot_id)
      .def_readonly("vm_id", &Event::vm_id)
      .def_readonly("outcome", &Event::outcome)
      .def_readonly("reason", &Event::reason)
      .def_readonly("timings", &Event::timings)
      .def_readonly("message", &Event::message);

  pyb::class_<HealthStats>(m, "HealthStats", "Health numbers of one snapshot.")
      .def_readonly("state", &HealthStats::state)
      .def_readonly("success_count", &HealthStats::success_count)
      .def_readonly("failure_count", &HealthStats::failure_count)
      .def_readonly("consecutive_failures", &HealthStats::consecutive_failures)
      .def_readonly("build_failures", &HealthStats::build_failures)
      .def_readonly("last_error", &HealthStats::last_error)
      .def_readonly("last_used_at", &HealthStats::last_used_at);

  pyb::class_<BuildOutcome>(m, "BuildOutcome", "The outcome of one snapshot build.")
      .def_readonly("snapshot_id", &BuildOutcome::snapshot_id)
      .def_readonly("runtime_image_id", &BuildOutcome::runtime_image_id)
      .def_readonly("ok", &BuildOutcome::ok)
      .def_readonly("generation", &BuildOutcome::generation)
      .def_readonly("build_failures", &BuildOutcome::build_failures)
      .def_readonly("error", &BuildOutcome::error)
      .def_property_readonly(
          "code", [](const BuildOutcome& o) { return std::string(StatusCodeName(o.code)); },
          "Name of the failure's code, 'ok' on success; 'resource_exhausted' when a file system filled up.")
      .def_readonly("timings", &BuildOutcome::timings)
      .def_readonly("automatic", &BuildOutcome::automatic);

  pyb::class_<ReconcileReport>(m, "ReconcileReport", "What startup reconciliation repaired.")
      .def_readonly("interrupted_builds", &ReconcileReport::interrupted_builds)
      .def_readonly("removed_temp_dirs", &ReconcileReport::removed_temp_dirs)
      .def_readonly("killed_processes", &ReconcileReport::killed_processes)
      .def_readonly("lost_vms", &ReconcileReport::lost_vms)
      .def_readonly("released_pooled_vms", &ReconcileReport::released_pooled_vms);

  pyb::class_<GcReport>(m, "GcReport", "What a garbage collection removed.")
      .def_readonly("removed_generations", &GcReport::removed_generations)
      .def_readonly("freed_bytes", &GcReport::freed_bytes);

  pyb::class_<RepositoryGeneration>(m, "RepositoryGeneration", "A generation in the shared snapshot repository.")
      .def_readonly("repo_key", &RepositoryGeneration::repo_key)
      .def_readonly("generation", &RepositoryGeneration::generation)
      .def_readonly("node", &RepositoryGeneration::node)
      .def_readonly("created_at", &RepositoryGeneration::created_at)
      .def_readonly("raw_bytes", &RepositoryGeneration::raw_bytes)
      .def_readonly("runtime_image", &RepositoryGeneration::runtime_image);
  pyb::class_<RepositoryGcOptions>(m, "RepositoryGcOptions", "Retention of repository GC.")
      .def(pyb::init<>())
      .def_readwrite("keep_newest", &RepositoryGcOptions::keep_newest)
      .def_readwrite("keep_newer_than", &RepositoryGcOptions::keep_newer_than)
      .def_readwrite("dry_run", &RepositoryGcOptions::dry_run);
  pyb::class_<RepositoryGcReport>(m, "RepositoryGcReport", "What repository GC deleted (or would delete).")
      .def_readonly("dry_run", &RepositoryGcReport::dry_run)
      .def_readonly("deleted", &RepositoryGcReport::deleted)
      .def_readonly("kept", &RepositoryGcReport::kept)
      .def_readonly("nodes", &RepositoryGcReport::nodes)
      .def_readonly("chunks_deleted", &RepositoryGcReport::chunks_deleted)
      .def_readonly("chunk_bytes_deleted", &RepositoryGcReport::chunk_bytes_deleted)
      .def_readonly("chunks_kept", &RepositoryGcReport::chunks_kept);
  pyb::class_<StoreOptions>(m, "StoreOptions", "Options of the SQLite store.")
      .def(pyb::init<>())
      .def_readwrite("path", &StoreOptions::path)
      .def_readwrite("busy_timeout", &StoreOptions::busy_timeout);
  pyb::class_<SnapshotRepositoryOptions>(m, "SnapshotRepositoryOptions",
                                         "The snapshot repository shared by many hosts (docs/multi-host.md).")
      .def(pyb::init<>())
      .def_readwrite("url", &SnapshotRepositoryOptions::url, "s3://BUCKET[/PREFIX] or file:///DIR; '' for none.")
      .def_readwrite("s3_endpoint", &SnapshotRepositoryOptions::s3_endpoint)
      .def_readwrite("s3_region", &SnapshotRepositoryOptions::s3_region)
      .def_readwrite("credentials_file", &SnapshotRepositoryOptions::credentials_file)
      .def_readwrite("publish", &SnapshotRepositoryOptions::publish)
      .def_readwrite("fetch", &SnapshotRepositoryOptions::fetch)
      .def_readwrite("workers", &SnapshotRepositoryOptions::workers);
  pyb::class_<CoordinationOptions>(m, "CoordinationOptions", "One build per cluster through etcd.")
      .def(pyb::init<>())
      .def_readwrite("url", &CoordinationOptions::url, "etcd://HOST:PORT[,HOST:PORT...][/PREFIX]; '' for none.")
      .def_readwrite("lock_ttl", &CoordinationOptions::lock_ttl)
      .def_readwrite("wait_for_build", &CoordinationOptions::wait_for_build);
  pyb::class_<SnapshotManagerOptions>(m, "SnapshotManagerOptions", "Options of the snapshot manager.")
      .def(pyb::init<>())
      .def_readwrite("root_dir", &SnapshotManagerOptions::root_dir)
      .def_readwrite("build_dir", &SnapshotManagerOptions::build_dir)
      .def_readwrite("build_workers", &SnapshotManagerOptions::build_workers)
      .def_readwrite("max_snapshots_per_image", &SnapshotManagerOptions::max_snapshots_per_image)
      .def_readwrite("max_snapshots_total", &SnapshotManagerOptions::max_snapshots_total)
      .def_readwrite("agent_timeout", &SnapshotManagerOptions::agent_timeout)
      .def_readwrite("runtime_timeout", &SnapshotManagerOptions::runtime_timeout)
      .def_readwrite("poll_interval", &SnapshotManagerOptions::poll_interval)
      .def_readwrite("stop_grace", &SnapshotManagerOptions::stop_grace)
      .def_readwrite("reconcile_processes", &SnapshotManagerOptions::reconcile_processes)
      .def_readwrite("preload_images", &SnapshotManagerOptions::preload_images)
      .def_readwrite("pull_timeout", &SnapshotManagerOptions::pull_timeout)
      .def_readwrite("node_id", &SnapshotManagerOptions::node_id)
      .def_readwrite("repository", &SnapshotManagerOptions::repository)
      .def_readwrite("coordination", &SnapshotManagerOptions::coordination);
  pyb::class_<HealthOptions>(m, "HealthOptions", "Options of the health tracker.")
      .def(pyb::init<>())
      .def_readwrite("unhealthy_threshold", &HealthOptions::unhealthy_threshold)
      .def_readwrite("auto_rebuild", &HealthOptions::auto_rebuild)
      .def_readwrite("rebuild_backoff_initial", &HealthOptions::rebuild_backoff_initial)
      .def_readwrite("rebuild_backoff_max", &HealthOptions::rebuild_backoff_max);
  pyb::class_<RestoreOptions>(m, "RestoreOptions", "Options of the restore engine.")
      .def(pyb::init<>())
      .def_readwrite("vm_dir", &RestoreOptions::vm_dir)
      .def_readwrite("wait_for_creating", &RestoreOptions::wait_for_creating)
      .def_readwrite("restore_agent_timeout", &RestoreOptions::restore_agent_timeout)
      .def_readwrite("cold_agent_timeout", &RestoreOptions::cold_agent_timeout)
      .def_readwrite("restore_runtime_timeout", &RestoreOptions::restore_runtime_timeout)
      .def_readwrite("cold_runtime_timeout", &RestoreOptions::cold_runtime_timeout)
      .def_readwrite("poll_interval", &RestoreOptions::poll_interval)
      .def_readwrite("full_verify_every", &RestoreOptions::full_verify_every)
      .def_readwrite("address_pool_base", &RestoreOptions::address_pool_base)
      .def_readwrite("address_pool_size", &RestoreOptions::address_pool_size)
      .def_readwrite("allocate_network", &RestoreOptions::allocate_network)
      .def_readwrite("stop_grace", &RestoreOptions::stop_grace)
      .def_readwrite("fallback_to_cold", &RestoreOptions::fallback_to_cold)
      .def_readwrite("egress", &RestoreOptions::egress)
      .def_readwrite("dns", &RestoreOptions::dns)
      .def_readwrite("registry_mirrors", &RestoreOptions::registry_mirrors)
      .def_readwrite("insecure_registries", &RestoreOptions::insecure_registries)
      .def_readwrite("pool", &RestoreOptions::pool)
      .def_readwrite("pool_idle_timeout", &RestoreOptions::pool_idle_timeout)
      .def_readwrite("stop_vms_on_exit", &RestoreOptions::stop_vms_on_exit)
      .def_readonly_static("MAX_POOL_SIZE", &RestoreOptions::kMaxPoolSize);
  pyb::class_<ServiceOptions>(m, "ServiceOptions", "Options of every component.")
      .def(pyb::init<>())
      .def_readwrite("store", &ServiceOptions::store)
      .def_readwrite("snapshots", &ServiceOptions::snapshots)
      .def_readwrite("health", &ServiceOptions::health)
      .def_readwrite("restore", &ServiceOptions::restore)
      .def_readwrite("containers", &ServiceOptions::containers)
      .def_static("under_directory", &ServiceOptions::UnderDirectory, pyb::arg("data_dir"),
                  "Default options with every file under data_dir: fcwarm.db, snapshots/, build/, vms/.");

  pyb::class_<Store>(m, "Store", "The SQLite store (obtain it from Service.store).")
      .def_property_readonly("schema_version", &Store::SchemaVersion)
      .def_property_readonly("path", &Store::path)
      .def(
          "events",
          [](const Store& s, const std::string& kind, const std::string& runtime_image_id,
             const std::string& snapshot_id, int64_t after_id, int64_t limit, bool newest_first) {
            EventFilter f;
            if (!kind.empty()) f.kind = Unwrap(ParseEventKind(kind));
            f.runtime_image_id = runtime_image_id;
            f.snapshot_id = snapshot_id;
            f.after_id = after_id;
            f.limit = limit;
            f.newest_first = newest_first;
            return Unwrap(s.ListEvents(f));
          },
          Release(), pyb::arg("kind") = "", pyb::arg("runtime_image_id") = "", pyb::arg("snapshot_id") = "",
          pyb::arg("after_id") = 0, pyb::arg("limit") = 100, pyb::arg("newest_first") = false,
          "Lists events (paged with after_id).");
  m.attr("SCHEMA_VERSION") = Store::kSchemaVersion;
}

}  // namespace fcwarm::py
