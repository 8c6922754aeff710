// ContainerManager: containers on warm-booted VMs, their records, logs, requests and options.
#include <Python.h>

#include <algorithm>
#include <optional>

#include "py_common.hpp"

namespace fcwarm::py {

namespace {

using std::chrono::milliseconds;

// A ContainerRequest from keyword arguments, type-checked with errors naming the field. Values are checked by
// the library (InvalidArgumentError naming the field).
ContainerRequest MakeRequest(const pyb::object& image, const pyb::object& runtime_image,
                             const pyb::object& command, const pyb::object& env, const pyb::object& name,
                             const pyb::object& id, bool force_cold, const pyb::object& wait_for_creating,
                             const pyb::object& ports, const pyb::object& working_dir, const pyb::object& user,
                             bool read_only) {
  ContainerRequest r;
  r.working_dir = ToStr(working_dir, "working_dir", true);
  r.user = ToStr(user, "user", true);
  r.read_only = read_only;
  r.image = ToStr(image, "image", true);
  r.runtime_image = ToStr(runtime_image, "runtime_image", true);
  r.command = ToArgv(command, "command");
  r.env = ToStringMap(env, "env");
  r.name = ToStr(name, "name", true);
  r.id = ToStr(id, "id", true);
  r.force_cold = force_cold;
  r.ports = ToArgv(ports, "ports");
  if (!wait_for_creating.is_none()) r.wait_for_creating = ToMillis(wait_for_creating, "wait_for_creating");
  return r;
}

std::string Repr(const ContainerRecord& c) {
  std::string out = "<fcwarm.ContainerRecord " + c.id + " " + c.runtime + " " + std::string(ToString(c.state));
  if (c.exit_code) out += " exit_code=" + std::to_string(*c.exit_code);
  if (c.boot_method) out += " " + std::string(ToString(*c.boot_method));
  if (c.fallback_reason != FallbackReason::kNone) out += " (" + std::string(ToString(c.fallback_reason)) + ")";
  return out + ">";
}

// Defines `name` twice: taking a ContainerRequest, and taking its fields as keyword arguments (type-checked
// with errors naming the field). Both call `Method` with the GIL released.
template <Result<ContainerRecord> (ContainerManager::*Method)(const ContainerRequest&)>
void DefRequestMethod(pyb::class_<ContainerManager>& cls, const char* name, const char* doc) {
  cls.def(
      name, [](ContainerManager& c, const ContainerRequest& r) { return Unwrap((c.*Method)(r)); }, Release(),
      pyb::arg("request"), doc);
  cls.def(
      name,
      [](ContainerManager& c, const pyb::object& image, const pyb::object& runtime_image,
         const pyb::object& command, const pyb::object& env, const pyb::object& name, const pyb::object& id,
         bool force_cold, const pyb::object& wait_for_creating, const pyb::object& ports,
         const pyb::object& working_dir, const pyb::object& user, bool read_only) {
        auto r = MakeRequest(image, runtime_image, command, env, name, id, force_cold, wait_for_creating, ports,
                             working_dir, user, read_only);
        pyb::gil_scoped_release release;
        return Unwrap((c.*Method)(r));
      },
      pyb::arg("image") = pyb::none(), pyb::kw_only(), pyb::arg("runtime_image") = pyb::none(),
      pyb::arg("command") = pyb::none(), pyb::arg("env") = pyb::none(), pyb::arg("name") = pyb::none(),
      pyb::arg("id") = pyb::none(), pyb::arg("force_cold") = false, pyb::arg("wait_for_creating") = pyb::none(),
      pyb::arg("ports") = pyb::none(), pyb::arg("working_dir") = pyb::none(), pyb::arg("user") = pyb::none(),
      pyb::arg("read_only") = false, doc);
}

pyb::object Decode(const std::string& s) { return pyb::bytes(s).attr("decode")("utf-8", "replace"); }

}  // namespace

void BindContainers(pyb::module_& m) {
  pyb::enum_<ContainerState> state(m, "ContainerState", "Lifecycle of a container record.");
  state.value("PROVISIONING", ContainerState::kProvisioning)
      .value("PULLING", ContainerState::kPulling)
      .value("RUNNING", ContainerState::kRunning)
      .value("EXITED", ContainerState::kExited)
      .value("STOPPED", ContainerState::kStopped)
      .value("FAILED", ContainerState::kFailed)
      .value("LOST", ContainerState::kLost)
      .value("DESTROYED", ContainerState::kDestroyed);
  AddStr(state);
  state.def_property_readonly("finished", &IsTerminal,
                              "True once the container no longer provisions or runs (exited, stopped, failed, "
                              "lost or destroyed).");
  state.def_static(
      "parse", [](const std::string& name) { return Unwrap(ParseContainerState(name)); }, pyb::arg("name"),
      "The state named `name` (\"running\", ...); InvalidArgumentError for an unknown name.");

  pyb::class_<ContainerOptions>(m, "ContainerOptions", "Options of the container manager.")
      .def(pyb::init<>())
      .def_readwrite("docker_timeout", &ContainerOptions::docker_timeout)
      .def_readwrite("pull_timeout", &ContainerOptions::pull_timeout)
      .def_readwrite("publish_address", &ContainerOptions::publish_address)
      .def_readwrite("exec_timeout", &ContainerOptions::exec_timeout)
      .def_readwrite("docker_api_version", &ContainerOptions::docker_api_version)
      .def_readwrite("default_runtime_image", &ContainerOptions::default_runtime_image)
      .def_readwrite("start_workers", &ContainerOptions::start_workers)
      .def_readwrite("start_queue", &ContainerOptions::start_queue);

  pyb::class_<ContainerRequest>(m, "ContainerRequest", "What to run (ContainerManager.prepare / create).")
      .def(pyb::init(&MakeRequest), pyb::arg("image") = pyb::none(), pyb::kw_only(),
           pyb::arg("runtime_image") = pyb::none(), pyb::arg("command") = pyb::none(),
           pyb::arg("env") = pyb::none(), pyb::arg("name") = pyb::none(), pyb::arg("id") = pyb::none(),
           pyb::arg("force_cold") = false, pyb::arg("wait_for_creating") = pyb::none(), pyb::arg("ports") = pyb::none(),
           pyb::arg("working_dir") = pyb::none(), pyb::arg("user") = pyb::none(), pyb::arg("read_only") = false)
      .def_readwrite("runtime_image", &ContainerRequest::runtime_image)
      .def_readwrite("id", &ContainerRequest::id)
      .def_readwrite("name", &ContainerRequest::name)
      .def_readwrite("image", &ContainerRequest::image,
                     "The container image (Docker reference); empty for a VM-only runtime image.")
      .def_readwrite("command", &ContainerRequest::command, "The argv (assign a new list; a copy is returned).")
      .def_readwrite("env", &ContainerRequest::env, "The environment (assign a new dict; a copy is returned).")
      .def_readwrite("working_dir", &ContainerRequest::working_dir, "Absolute working directory, or empty.")
      .def_readwrite("user", &ContainerRequest::user, "user[:group] as Docker's --user, or empty.")
      .def_readwrite("read_only", &ContainerRequest::read_only, "Read-only root filesystem (created path).")
      .def_readwrite("force_cold", &ContainerRequest::force_cold)
      .def_readwrite("ports", &ContainerRequest::ports,
                     "Published ports in Docker's -p syntax, e.g. [\"8080:80\"] (assign a new list).")
      .def_readwrite("wait_for_creating", &ContainerRequest::wait_for_creating)
      .def("__repr__", [](const ContainerRequest& r) {
        return "<fcwarm.ContainerRequest " + (r.image.empty() ? "(no image)" : r.image) +
               (r.runtime_image.empty() ? "" : " on " + r.runtime_image) + ">";
      });

  pyb::class_<ImagePull>(m, "ImagePull", "What pulling a container's image took.")
      .def_readonly("layers", &ImagePull::layers, "Layers downloaded.")
      .def_readonly("bytes", &ImagePull::bytes, "Their compressed sizes.")
      .def_readonly("ms", &ImagePull::ms, "Duration in ms (so far, while it runs).")
      .def_readonly("layers_total", &ImagePull::layers_total, "Layers the pull downloads, as announced so far.")
      .def_readonly("bytes_total", &ImagePull::bytes_total, "Announced sizes of the layers being downloaded.")
      .def_readonly("done", &ImagePull::done, "The pull finished (False while the container is pulling).")
      .def("__repr__", [](const ImagePull& p) {
        return "<fcwarm.ImagePull layers=" + std::to_string(p.layers) + "/" + std::to_string(p.layers_total) +
               " bytes=" + std::to_string(p.bytes) + "/" + std::to_string(p.bytes_total) +
               (p.done ? " done" : " running") + ">";
      });

  pyb::class_<ContainerRecord>(m, "ContainerRecord", "A container and the VM it runs in.")
      .def_readonly("id", &ContainerRecord::id)
      .def_property_readonly("vm_id", &ContainerRecord::vm_id,
                             "Id of its VM once the VM exists (the container's id), else None.")
      .def_readonly("name", &ContainerRecord::name)
      .def_readonly("runtime_image_id", &ContainerRecord::runtime_image_id)
      .def_readonly("runtime", &ContainerRecord::runtime, "\"docker\" or \"vm\".")
      .def_readonly("image", &ContainerRecord::image, "The container image (docker runtime), or empty.")
      .def_readonly("command", &ContainerRecord::command)
      .def_readonly("env", &ContainerRecord::env)
      .def_readonly("working_dir", &ContainerRecord::working_dir)
      .def_readonly("user", &ContainerRecord::user)
      .def_readonly("read_only", &ContainerRecord::read_only)
      .def_readonly("container_path", &ContainerRecord::container_path,
                    "\"parked\" or \"created\" (docker runtime, once known), else empty.")
      .def_readonly("container_path_reason", &ContainerRecord::container_path_reason,
                    "Why the created path was taken, or empty.")
      .def_readonly("ports", &ContainerRecord::ports, "Published ports, resolved: \"127.0.0.1:8080:80/tcp\".")
      .def_readonly("pull", &ContainerRecord::pull, "The image pull (ImagePull): live progress while pulling, then what it took; None without a pull.")
      .def_readonly("state", &ContainerRecord::state)
      .def_readonly("docker_id", &ContainerRecord::docker_id)
      .def_readonly("exit_code", &ContainerRecord::exit_code, "Exit code once exited, else None.")
      .def_readonly("boot_method", &ContainerRecord::boot_method)
      .def_readonly("fallback_reason", &ContainerRecord::fallback_reason)
      .def_readonly("timings", &ContainerRecord::timings, "Per-step durations in ms.")
      .def_readonly("snapshot_id", &ContainerRecord::snapshot_id)
      .def_readonly("generation", &ContainerRecord::generation)
      .def_readonly("vm_state", &ContainerRecord::vm_state)
      .def_readonly("address", &ContainerRecord::address)
      .def_readonly("mac", &ContainerRecord::mac)
      .def_readonly("hostname", &ContainerRecord::hostname)
      .def_readonly("last_error", &ContainerRecord::last_error)
      .def_readonly("created_at", &ContainerRecord::created_at)
      .def_readonly("updated_at", &ContainerRecord::updated_at)
      .def_readonly("started_at", &ContainerRecord::started_at)
      .def_readonly("finished_at", &ContainerRecord::finished_at)
      .def("__repr__", &Repr);

  pyb::class_<ContainerLogs>(m, "ContainerLogs", "A container's output (bytes; each stream capped at 1 MiB).")
      .def_property_readonly("stdout", [](const ContainerLogs& l) { return pyb::bytes(l.stdout_data); })
      .def_property_readonly("stderr", [](const ContainerLogs& l) { return pyb::bytes(l.stderr_data); })
      .def_property_readonly("stdout_text", [](const ContainerLogs& l) { return Decode(l.stdout_data); },
                             "stdout decoded as UTF-8 (invalid bytes replaced).")
      .def_property_readonly("stderr_text", [](const ContainerLogs& l) { return Decode(l.stderr_data); },
                             "stderr decoded as UTF-8 (invalid bytes replaced).")
      .def_readonly("truncated", &ContainerLogs::truncated)
      .def("__repr__", [](const ContainerLogs& l) {
        return "<fcwarm.ContainerLogs stdout=" + std::to_string(l.stdout_data.size()) +
               " bytes stderr=" + std::to_string(l.stderr_data.size()) + " bytes" +
               (l.truncated ? " truncated" : "") + ">";
      });

  const char* create_doc =
      "Provisions the container's VM (warm when possible, cold otherwise), creates and starts the container, "
      "and returns its record (state RUNNING or EXITED). Blocks; the GIL is released.";
  const char* prepare_doc =
      "Validates the request and records the container as PROVISIONING without starting anything; start it "
      "with start(id) (e.g. on a worker thread) or give it up with abandon(id, reason).";

  pyb::class_<ContainerManager> manager(m, "ContainerManager",
                                        "Containers on warm-booted VMs: one VM per container, from the restore engine.");
  DefRequestMethod<&ContainerManager::Prepare>(manager, "prepare", prepare_doc);
  DefRequestMethod<&ContainerManager::Create>(manager, "create", create_doc);
  DefRequestMethod<&ContainerManager::CreateAsync>(
      manager, "create_async",
      "Records the container and starts it in the background on the manager's start workers; returns at once "
      "(state PROVISIONING). Follow it with get() or wait(). ResourceExhaustedError when the start queue is full.");
  manager
      .def("start", [](ContainerManager& c, const std::string& id) { return Unwrap(c.Start(id)); }, Release(),
           pyb::arg("id"), "Starts a prepared container; blocks like create().")
      .def("abandon",
           [](ContainerManager& c, const std::string& id, const std::string& reason) { Check(c.Abandon(id, reason)); },
           Release(), pyb::arg("id"), pyb::arg("reason"),
           "Marks a prepared, never started container as FAILED with `reason` as its last_error.")
      .def("get", [](ContainerManager& c, const std::string& id) { return Unwrap(c.Get(id)); }, Release(),
           pyb::arg("id"), "The record; a running docker container's state is refreshed from its daemon first.")
      .def("list", [](ContainerManager& c, bool d) { return Unwrap(c.List(d)); }, Release(),
           pyb::arg("include_destroyed") = false, "Containers, newest first.")
      .def(
          "wait",
          [](ContainerManager& c, const std::string& id, const pyb::object& timeout) {
            using Clock = std::chrono::steady_clock;
            std::optional<Clock::time_point> deadline;
            if (!timeout.is_none()) deadline = Clock::now() + ToMillis(timeout, "timeout");
            // Waits in short slices so that Ctrl-C (KeyboardInterrupt) is honoured while waiting.
            constexpr milliseconds kSlice(250);
            while (true) {
              milliseconds slice = kSlice;
              if (deadline) {
                auto left = std::chrono::duration_cast<milliseconds>(*deadline - Clock::now());
                slice = std::clamp(left, milliseconds(0), kSlice);
              }
              std::optional<Result<ContainerRecord>> r;
              {
                pyb::gil_scoped_release release;
                r.emplace(c.Wait(id, slice));
              }
              ContainerRecord rec = Unwrap(std::move(*r));
              if (IsTerminal(rec.state) || (deadline && Clock::now() >= *deadline)) return rec;
              if (PyErr_CheckSignals() != 0) throw pyb::error_already_set();
            }
          },
          pyb::arg("id"), pyb::arg("timeout") = 30.0,
          "Waits until the container no longer provisions or runs, at most `timeout` (seconds or a timedelta; "
          "None: no deadline), and returns its record. Still running at the deadline is not an error: check "
          "record.state.")
      .def("logs", [](ContainerManager& c, const std::string& id) { return Unwrap(c.Logs(id)); }, Release(),
           pyb::arg("id"),
           "Its output: from the daemon while its VM runs, else as captured when it exited or was stopped. "
           "ConflictError when there is none (still provisioning, or nothing was captured).")
      .def("stop", [](ContainerManager& c, const std::string& id) { return Unwrap(c.Stop(id)); }, Release(),
           pyb::arg("id"), "Stops its VM (capturing the output first); idempotent. Returns the record.")
      .def("destroy", [](ContainerManager& c, const std::string& id) { Check(c.Destroy(id)); }, Release(),
           pyb::arg("id"), "Destroys its VM and releases everything; the record stays as DESTROYED.")
      .def("provisioning", &ContainerManager::Provisioning, Release(),
           "How many containers are prepared or starting in this process.");
}

}  // namespace fcwarm::py
