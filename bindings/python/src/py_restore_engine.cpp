// RestoreEngine, live VM handles (guest access, Docker API proxy) and the after-restore hook.
#include <shared_mutex>

#include "py_common.hpp"

namespace fcwarm::py {

namespace {

// The Vm an after-restore hook receives. The engine owns the real VM and may destroy it as soon as the hook
// returns, but Python may keep a reference; so Python gets this forwarder, which is cut off when the hook
// returns: afterwards it reports pid -1, not alive, and every call fails with FailedPrecondition.
class BorrowedVm final : public Vm {
 public:
  explicit BorrowedVm(Vm& vm) : vm_(&vm), guest_(*this) {}
  // Waits for calls in flight (from other Python threads) before cutting off.
  void Invalidate() {
    std::unique_lock lock(mu_);
    vm_ = nullptr;
  }
  int pid() const override {
    std::shared_lock lock(mu_);
    return vm_ ? vm_->pid() : -1;
  }
  bool IsAlive() override {
    std::shared_lock lock(mu_);
    return vm_ && vm_->IsAlive();
  }
  GuestChannel& guest() override { return guest_; }
  Status Pause() override { return With([](Vm& v) { return v.Pause(); }); }
  Status Resume() override { return With([](Vm& v) { return v.Resume(); }); }
  Status Snapshot(const std::string& dir) override { return With([&](Vm& v) { return v.Snapshot(dir); }); }
  Status Stop(std::chrono::milliseconds grace) override { return With([&](Vm& v) { return v.Stop(grace); }); }
  std::string console_log() const override {
    std::shared_lock lock(mu_);
    return vm_ ? vm_->console_log() : std::string();
  }

  template <typename F>
  auto With(F&& f) -> decltype(f(std::declval<Vm&>())) {
    std::shared_lock lock(mu_);
    if (!vm_) {
      return Status::FailedPrecondition(
          "this VM handle was passed to an after-restore hook and is valid only while the hook runs; use "
          "RestoreEngine.handle(vm_id) afterwards");
    }
    return f(*vm_);
  }

 private:
  class Guest final : public GuestChannel {
   public:
    explicit Guest(BorrowedVm& owner) : owner_(owner) {}
    Result<GuestInfo> Ping(std::chrono::milliseconds t) override {
      return owner_.With([&](Vm& v) { return v.guest().Ping(t); });
    }
    Result<IdentityResult> SetIdentity(const IdentityRequest& r, std::chrono::milliseconds t) override {
      return owner_.With([&](Vm& v) { return v.guest().SetIdentity(r, t); });
    }
    Result<RuntimeReadiness> RuntimeReady(const RuntimeCheck& c, std::chrono::milliseconds t) override {
      return owner_.With([&](Vm& v) { return v.guest().RuntimeReady(c, t); });
    }
    Status Quiesce(std::chrono::milliseconds t) override {
      return owner_.With([&](Vm& v) { return v.guest().Quiesce(t); });
    }
    Result<ExecResult> Exec(const ExecRequest& r, std::chrono::milliseconds t) override {
      return owner_.With([&](Vm& v) { return v.guest().Exec(r, t); });
    }
    Result<DockerResponse> Docker(const DockerRequest& r, std::chrono::milliseconds t) override {
      return owner_.With([&](Vm& v) { return v.guest().Docker(r, t); });
    }

   private:
    BorrowedVm& owner_;
  };

  mutable std::shared_mutex mu_;
  Vm* vm_;
  Guest guest_;
};

// Calls the Python hook on the provisioning thread. An exception raised by the hook cannot cross the library
// (which has no exceptions): it is reported through sys.unraisablehook and provisioning continues as if there
// were no hook. KeyboardInterrupt is re-raised in the main thread instead of being swallowed.
void CallAfterRestoreHook(const std::shared_ptr<pyb::function>& fn, const std::string& vm_id, Vm& vm) {
  auto borrowed = std::make_shared<BorrowedVm>(vm);
  {
    pyb::gil_scoped_acquire gil;
    try {
      (*fn)(vm_id, std::shared_ptr<Vm>(borrowed));
    } catch (pyb::error_already_set& e) {
      if (e.matches(PyExc_KeyboardInterrupt)) {
        PyErr_SetInterrupt();
      } else {
        e.discard_as_unraisable("fcwarm after-restore hook");
      }
    } catch (const std::exception& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
      PyErr_WriteUnraisable(fn->ptr());
    }
  }
  borrowed->Invalidate();
}

ExecResult ExecIn(Vm& vm, std::vector<std::string> argv, std::chrono::milliseconds timeout) {
  ExecRequest req;
  req.argv = std::move(argv);
  req.timeout = timeout;
  return Unwrap(vm.guest().Exec(req, timeout + std::chrono::seconds(5)));
}

DockerResponse DockerIn(Vm& vm, const DockerRequest& req) {
  return Unwrap(vm.guest().Docker(req, req.timeout + std::chrono::seconds(5)));
}

}  // namespace

void BindRestoreEngine(pyb::module_& m) {
  pyb::class_<ExecResult>(m, "ExecResult", "Result of a command run in the guest.")
      .def_readonly("exit_code", &ExecResult::exit_code)
      .def_property_readonly("stdout", [](const ExecResult& r) { return pyb::bytes(r.stdout_data); })
      .def_property_readonly("stderr", [](const ExecResult& r) { return pyb::bytes(r.stderr_data); })
      .def_readonly("truncated", &ExecResult::truncated);

  pyb::class_<DockerRequest>(m, "DockerRequest", "One Docker Engine API request proxied by the guest agent.")
      .def(pyb::init([](std::string method, std::string path, std::string body, std::string socket,
                        std::chrono::milliseconds timeout) {
             DockerRequest r;
             r.method = std::move(method);
             r.path = std::move(path);
             r.body = std::move(body);
             r.socket = std::move(socket);
             r.timeout = timeout;
             return r;
           }),
           pyb::arg("method") = "GET", pyb::arg("path") = "", pyb::arg("body") = "",
           pyb::arg("socket") = "/var/run/docker.sock", pyb::arg("timeout") = std::chrono::milliseconds(30000))
      .def_readwrite("method", &DockerRequest::method)
      .def_readwrite("path", &DockerRequest::path)
      .def_readwrite("body", &DockerRequest::body)
      .def_readwrite("socket", &DockerRequest::socket)
      .def_readwrite("timeout", &DockerRequest::timeout)
      .def("__repr__", [](const DockerRequest& r) { return "<fcwarm.DockerRequest " + r.method + " " + r.path + ">"; });

  pyb::class_<DockerResponse>(m, "DockerResponse", "The guest Docker daemon's answer (any HTTP status).")
      .def_readonly("status", &DockerResponse::status)
      .def_property_readonly("body", [](const DockerResponse& r) { return pyb::bytes(r.body); })
      .def_readonly("truncated", &DockerResponse::truncated)
      .def_property_readonly(
          "text", [](const DockerResponse& r) { return pyb::bytes(r.body).attr("decode")("utf-8", "replace"); },
          "The body decoded as UTF-8 (invalid bytes replaced).")
      .def(
          "json", [](const DockerResponse& r) { return pyb::module_::import("json").attr("loads")(pyb::bytes(r.body)); },
          "The body parsed as JSON (raises ValueError when it is not JSON).")
      .def("__repr__", [](const DockerResponse& r) {
        return "<fcwarm.DockerResponse " + std::to_string(r.status) + " " + std::to_string(r.body.size()) + " bytes>";
      });

  pyb::class_<Vm, std::shared_ptr<Vm>>(m, "Vm", "A running VM (from RestoreEngine.handle).")
      .def_property_readonly("pid", &Vm::pid)
      .def("is_alive", &Vm::IsAlive, Release())
      .def_property_readonly("console_log", &Vm::console_log)
      .def(
          "ping",
          [](Vm& vm, std::chrono::milliseconds timeout) {
            auto r = Unwrap(vm.guest().Ping(timeout));
            return std::map<std::string, std::string>{{"agent_version", r.agent_version},
                                                      {"boot_id", r.boot_id},
                                                      {"hostname", r.hostname},
                                                      {"uptime_ms", std::to_string(r.uptime_ms)}};
          },
          Release(), pyb::arg("timeout") = std::chrono::milliseconds(5000), "Pings the guest agent.")
      .def(
          "exec",
          [](Vm& vm, std::vector<std::string> argv, std::chrono::milliseconds timeout) {
            return ExecIn(vm, std::move(argv), timeout);
          },
          Release(), pyb::arg("argv"), pyb::arg("timeout") = std::chrono::milliseconds(10000),
          "Runs a command in the guest (argv, no shell).")
      .def("docker", &DockerIn, Release(), pyb::arg("request"),
           "Sends one Docker Engine API request to the guest's Docker daemon through the agent.")
      .def(
          "docker",
          [](Vm& vm, const std::string& method, const std::string& path, std::optional<std::string> body,
             const std::string& socket, std::chrono::milliseconds timeout) {
            DockerRequest req;
            req.method = method;
            req.path = path;
            req.body = body.value_or("");
            req.socket = socket;
            req.timeout = timeout;
            return DockerIn(vm, req);
          },
          Release(), pyb::arg("method"), pyb::arg("path"), pyb::arg("body") = std::nullopt, pyb::kw_only(),
          pyb::arg("socket") = std::string("/var/run/docker.sock"),
          pyb::arg("timeout") = std::chrono::milliseconds(30000),
          "Sends one Docker Engine API request (e.g. 'GET', '/v1.41/containers/json') to the guest's Docker "
          "daemon through the agent; returns the daemon's DockerResponse whatever its HTTP status.");

  pyb::class_<PooledClone>(m, "PooledClone", "A clone waiting in the pool (RestoreOptions.pool).")
      .def_readonly("vm_id", &PooledClone::vm_id)
      .def_readonly("snapshot_id", &PooledClone::snapshot_id)
      .def_readonly("generation", &PooledClone::generation)
      .def_readonly("ready_at", &PooledClone::ready_at)
      .def_readonly("pid", &PooledClone::pid)
      .def_readonly("pss_bytes", &PooledClone::pss_bytes);
  pyb::class_<PoolStatus>(m, "PoolStatus", "The clone pool of one configured image.")
      .def_readonly("image", &PoolStatus::image)
      .def_readonly("runtime_image_id", &PoolStatus::runtime_image_id)
      .def_readonly("target", &PoolStatus::target)
      .def_readonly("clones", &PoolStatus::clones)
      .def_readonly("filling", &PoolStatus::filling)
      .def_readonly("filled", &PoolStatus::filled)
      .def_readonly("taken", &PoolStatus::taken)
      .def_readonly("misses", &PoolStatus::misses)
      .def_readonly("discarded", &PoolStatus::discarded)
      .def_readonly("last_error", &PoolStatus::last_error);

  pyb::class_<RestoreEngine>(m, "RestoreEngine", "Returns ready VMs: warm when possible, cold otherwise.")
      .def(
          "provision",
          [](RestoreEngine& e, const std::string& image_id, const std::string& name,
             std::optional<std::chrono::milliseconds> wait_for_creating, bool force_cold) {
            ProvisionRequest r;
            r.runtime_image_id = image_id;
            r.name = name;
            r.wait_for_creating = wait_for_creating;
            r.force_cold = force_cold;
            return Unwrap(e.Provision(r));
          },
          Release(), pyb::arg("runtime_image_id"), pyb::arg("name") = "",
          pyb::arg("wait_for_creating") = std::nullopt, pyb::arg("force_cold") = false,
          "Starts a VM of the image and returns its VmRecord (boot_method, fallback_reason, timings).")
      .def("stop", [](RestoreEngine& e, const std::string& id) { Check(e.Stop(id)); }, Release(), pyb::arg("vm_id"))
      .def("destroy", [](RestoreEngine& e, const std::string& id) { Check(e.Destroy(id)); }, Release(),
           pyb::arg("vm_id"), "Stops the VM and releases its disk, network and address.")
      .def("get", [](const RestoreEngine& e, const std::string& id) { return Unwrap(e.Get(id)); }, Release(),
           pyb::arg("vm_id"))
      .def("list", [](const RestoreEngine& e, bool d) { return Unwrap(e.List(d)); }, Release(),
           pyb::arg("include_destroyed") = false)
      .def("handle", [](const RestoreEngine& e, const std::string& id) { return Unwrap(e.Handle(id)); }, Release(),
           pyb::arg("vm_id"), "The live VM (for guest access).")
      .def("measured_cold_boot_ms", &RestoreEngine::MeasuredColdBootMs, Release(), pyb::arg("runtime_image_id"))
      .def("pool", &RestoreEngine::Pool, Release(),
           "The clone pool: one PoolStatus per configured image (RestoreOptions.pool).")
      .def("check_pool", [](const RestoreEngine& e) { Check(e.CheckPool()); }, Release(),
           "Raises NotFoundError naming the first image of RestoreOptions.pool that is not registered.")
      .def(
          "set_after_restore_hook",
          [](RestoreEngine& e, std::optional<pyb::function> hook) {
            std::function<void(const std::string&, Vm&)> fn;
            if (hook) {
              auto held = HoldCallable(std::move(*hook));
              fn = [held](const std::string& vm_id, Vm& vm) { CallAfterRestoreHook(held, vm_id, vm); };
            }
            pyb::gil_scoped_release release;
            e.SetAfterRestoreHook(std::move(fn));
          },
          pyb::arg("hook"),
          "Installs hook(vm_id, vm), called on the provisioning thread right after a warm clone was restored and "
          "before its identity refresh and runtime verification (fault injection, diagnostics); None removes it. "
          "`vm` is valid only while the hook runs. An exception raised by the hook is reported through "
          "sys.unraisablehook and provisioning goes on. The engine keeps the callable alive until it is "
          "replaced or removed.");
}

}  // namespace fcwarm::py
