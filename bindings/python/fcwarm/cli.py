"""The ``fcwarm`` command: manage runtime images, snapshots and containers.

Works on the library directly (``--data-dir``, default /var/lib/fcwarm) or on a running fcwarm-server
(``--server http://127.0.0.1:18080``). Tables for humans by default, ``--json`` for scripts.

Exit codes: 0 success, 1 failure, 2 usage error or invalid argument, 3 not found, 4 conflict.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT = 0, 1, 2, 3, 4

PHASES = ["queued", "booting", "waiting_runtime", "quiescing", "pausing", "snapshotting", "verifying",
          "publishing", "done"]


class CliError(Exception):
    def __init__(self, message, exit_code=EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


_CODE_TO_EXIT = {"invalid_argument": EXIT_USAGE, "not_found": EXIT_NOT_FOUND, "already_exists": EXIT_CONFLICT,
                 "failed_precondition": EXIT_CONFLICT, "resource_exhausted": EXIT_CONFLICT}


# ---- value conversion ---------------------------------------------------------------------------------------

def _plain(value):
    """Converts library objects to JSON-able dicts (same field names as the REST API)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "label"):  # enums
        return value.label
    out = {}
    for name in dir(value):
        if name.startswith("_"):
            continue
        attr = getattr(value, name)
        if callable(attr):
            continue
        out[name] = _plain(attr)
    return out


# ---- backends -----------------------------------------------------------------------------------------------

def default_vmms():
    """The backends this host can run: QEMU when qemu-system-x86_64 works here."""
    import fcwarm

    vmms = fcwarm.VmmRegistry()
    maker = getattr(fcwarm, "make_qemu_vmm", None)
    if maker is not None:
        try:
            vmms.add(maker())
        except fcwarm.Error:
            pass
    return vmms


class LocalBackend:
    """Drives the library in this process."""

    def __init__(self, data_dir, vmms=None):
        import fcwarm

        self.fcwarm = fcwarm
        if vmms is None:
            vmms = default_vmms()
        try:
            self.svc = fcwarm.open_service(data_dir, vmms)
        except fcwarm.ConflictError as e:
            raise CliError(f"{e} (use --server to talk to the running server)", EXIT_CONFLICT)

    def _image_id(self, ref):
        if self.fcwarm.is_valid_id(ref):
            return ref
        return self.svc.images.get_by_name(ref).id

    def image_add(self, spec):
        check = self.fcwarm.RuntimeCheck(kind=spec.pop("check_kind"), path=spec.pop("check_path"),
                                         argv=spec.pop("check_argv"))
        return _plain(self.svc.images.register(self.fcwarm.RuntimeImage(runtime_check=check, **spec)))

    def image_ls(self):
        return [_plain(i) for i in self.svc.images.list()]

    def image_get(self, ref):
        return _plain(self.svc.images.get(self._image_id(ref)))

    def image_rm(self, ref):
        self.svc.images.remove(self._image_id(ref))

    def snapshot_create(self, image_ref):
        return _plain(self.svc.snapshots.create(self._image_id(image_ref)))

    def snapshot_ls(self, image_ref, include_deleted):
        image_id = self._image_id(image_ref) if image_ref else ""
        return [_plain(s) for s in self.svc.snapshots.list(image_id, None, include_deleted)]

    def snapshot_get(self, sid):
        return _plain(self.svc.snapshots.get(sid))

    def snapshot_rebuild(self, sid):
        return _plain(self.svc.snapshots.rebuild(sid))

    def snapshot_rm(self, sid):
        self.svc.snapshots.delete(sid)

    def container_run(self, image_ref, name):
        return _plain(self.svc.engine.provision(self._image_id(image_ref), name=name or ""))

    def container_ls(self):
        return [_plain(v) for v in self.svc.engine.list(False)]

    def container_get(self, cid):
        return _plain(self.svc.engine.get(cid))

    def container_rm(self, cid):
        self.svc.engine.destroy(cid)


class RestBackend:
    """Talks to fcwarm-server."""

    def __init__(self, base, token):
        self.base = base.rstrip("/")
        self.token = token

    def _call(self, method, path, body=None, query=None):
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(req, timeout=900) as resp:
                text = resp.read().decode()
                return json.loads(text) if text else {}
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read().decode())["error"]
                code, message = err.get("code", "internal"), err.get("message", "")
            except Exception:  # noqa: BLE001 - a non-JSON error page
                code, message = "internal", f"HTTP {e.code}"
            raise CliError(message, _CODE_TO_EXIT.get(code, EXIT_FAILURE))
        except urllib.error.URLError as e:
            raise CliError(f"cannot reach {self.base}: {e.reason}")

    def _image_id(self, ref):
        import fcwarm

        if fcwarm.is_valid_id(ref):
            return ref
        for item in self._call("GET", "/v1/images")["items"]:
            if item.get("name") == ref:
                return item["id"]
        raise CliError(f"runtime image named '{ref}' not found", EXIT_NOT_FOUND)

    def image_add(self, spec):
        body = dict(spec)
        body["runtime_check"] = {"kind": body.pop("check_kind"), "path": body.pop("check_path"),
                                 "argv": body.pop("check_argv")}
        return self._call("POST", "/v1/images", body)["item"]

    def image_ls(self):
        return self._call("GET", "/v1/images")["items"]

    def image_get(self, ref):
        return self._call("GET", f"/v1/images/{self._image_id(ref)}")["item"]

    def image_rm(self, ref):
        self._call("DELETE", f"/v1/images/{self._image_id(ref)}")

    def snapshot_create(self, image_ref):
        return self._call("POST", "/v1/runtime-snapshots", {"runtime_image_id": self._image_id(image_ref)})["item"]

    def snapshot_ls(self, image_ref, include_deleted):
        q = {}
        if image_ref:
            q["runtime_image_id"] = self._image_id(image_ref)
        if include_deleted:
            q["include_deleted"] = "true"
        return self._call("GET", "/v1/runtime-snapshots", query=q)["items"]

    def snapshot_get(self, sid):
        return self._call("GET", f"/v1/runtime-snapshots/{urllib.parse.quote(sid, safe='')}")["item"]

    def snapshot_rebuild(self, sid):
        return self._call("POST", f"/v1/runtime-snapshots/{urllib.parse.quote(sid, safe='')}/rebuild").get("item", {})

    def snapshot_rm(self, sid):
        self._call("DELETE", f"/v1/runtime-snapshots/{urllib.parse.quote(sid, safe='')}")

    def container_run(self, image_ref, name):
        body = {"name": name or "c" + str(int(time.time() * 1000)), "image": image_ref, "wait": True}
        return self._call("POST", "/v1/containers", body)["item"]

    def container_ls(self):
        return self._call("GET", "/v1/containers")["items"]

    def container_get(self, cid):
        return self._call("GET", f"/v1/containers/{urllib.parse.quote(cid, safe='')}")["item"]

    def container_rm(self, cid):
        self._call("DELETE", f"/v1/containers/{urllib.parse.quote(cid, safe='')}")


# ---- output -------------------------------------------------------------------------------------------------

def _table(rows, columns, out):
    if not rows:
        print("(none)", file=out)
        return
    cells = [[str(_field(r, c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip(), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip(), file=out)


def _field(row, column):
    value = row.get(column, "")
    if column == "timings" and isinstance(value, dict):
        return " ".join(f"{k}={v:.0f}ms" for k, v in sorted(value.items()))
    if value is None:
        return "-"
    return value


def _show(obj, out):
    width = max((len(k) for k in obj), default=0)
    for key in sorted(obj):
        value = obj[key]
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        print(f"{key.ljust(width)}  {value}", file=out)


def _progress(backend, snap, out, interactive_tty):
    """Polls the snapshot and draws a bar over the build phases until it leaves `creating`."""
    last = None
    while True:
        if snap["state"] != "creating":
            break
        phase = snap.get("phase", "queued")
        idx = PHASES.index(phase) if phase in PHASES else 0
        bar = "#" * (idx + 1) + "." * (len(PHASES) - idx - 1)
        line = f"[{bar}] {phase}"
        if interactive_tty:
            print("\r" + line.ljust(40), end="", file=out, flush=True)
        elif line != last:
            print(line, file=out, flush=True)
        last = line
        time.sleep(0.2)
        snap = backend.snapshot_get(snap["id"])
    if interactive_tty:
        print("\r" + f"[{'#' * len(PHASES)}] {snap['state']}".ljust(40), file=out)
    return snap


# ---- main ---------------------------------------------------------------------------------------------------

def _parser():
    p = argparse.ArgumentParser(prog="fcwarm", description="Warm boot for microVM platforms.")
    p.add_argument("--data-dir", default=os.environ.get("FCWARM_DATA_DIR", "/var/lib/fcwarm"),
                   help="library mode: where the store and snapshots live (default /var/lib/fcwarm)")
    p.add_argument("--server", default=os.environ.get("FCWARM_SERVER"),
                   help="talk to fcwarm-server at this URL instead of opening the store")
    p.add_argument("--token", default=os.environ.get("FCWARM_TOKEN"), help="bearer token for --server")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="group")

    img = sub.add_parser("image", help="runtime images").add_subparsers(dest="cmd", required=True)
    add = img.add_parser("add", help="register an image")
    add.add_argument("name")
    add.add_argument("--kernel", required=True, dest="kernel_path")
    add.add_argument("--initrd", default="", dest="initrd_path")
    add.add_argument("--rootfs", default="", dest="rootfs_path")
    add.add_argument("--boot-args", default="")
    add.add_argument("--backend", default="qemu")
    add.add_argument("--vcpus", type=int, default=1)
    add.add_argument("--memory-mib", type=int, default=512)
    add.add_argument("--check-kind", default="none", choices=["none", "file", "docker", "command"])
    add.add_argument("--check-path", default="")
    add.add_argument("--check-argv", nargs="*", default=[])
    img.add_parser("ls", help="list images")
    g = img.add_parser("get", help="show an image")
    g.add_argument("image")
    rm = img.add_parser("rm", help="remove an image")
    rm.add_argument("image")

    snap = sub.add_parser("snapshot", help="runtime snapshots").add_subparsers(dest="cmd", required=True)
    c = snap.add_parser("create", help="build a runtime snapshot (progress bar over the build phases)")
    c.add_argument("image", nargs="?", help="image id or name (omit with -i)")
    c.add_argument("-i", "--interactive", action="store_true", help="choose the image from a list")
    c.add_argument("--no-wait", action="store_true", help="return once the build is queued")
    ls = snap.add_parser("ls", help="list snapshots")
    ls.add_argument("--image", default="")
    ls.add_argument("--all", action="store_true", help="include deleted snapshots")
    for name, helptext in (("get", "show a snapshot"), ("rebuild", "rebuild a snapshot"), ("rm", "delete a snapshot")):
        s = snap.add_parser(name, help=helptext)
        s.add_argument("snapshot")

    cont = sub.add_parser("container", help="containers (VMs of a runtime image)").add_subparsers(dest="cmd", required=True)
    run = cont.add_parser("run", help="start a container: warm from the snapshot when possible")
    run.add_argument("image")
    run.add_argument("--name", default="")
    cont.add_parser("ls", help="list containers")
    for name, helptext in (("get", "show a container"), ("rm", "destroy a container")):
        s = cont.add_parser(name, help=helptext)
        s.add_argument("container")
    return p


def main(argv=None, out=None, vmms=None):
    """Runs the CLI; returns the exit code. `vmms` overrides the backends of library mode (for embedding)."""
    out = out or sys.stdout
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    if args.version:
        import fcwarm

        print(f"fcwarm {fcwarm.__version__}", file=out)
        return EXIT_OK
    if not args.group:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        import fcwarm

        try:
            return _run(args, out, vmms)
        except fcwarm.Error as e:
            code = getattr(e, "code", "internal")
            raise CliError(str(e), _CODE_TO_EXIT.get(code, EXIT_FAILURE))
    except CliError as e:
        print(f"fcwarm: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _run(args, out, vmms):
    backend = RestBackend(args.server, args.token) if args.server else LocalBackend(args.data_dir, vmms)
    emit = (lambda obj: print(json.dumps(obj, indent=2, sort_keys=True), file=out)) if args.json else None
    group, cmd = args.group, args.cmd

    if group == "image":
        if cmd == "add":
            spec = {k: getattr(args, k) for k in ("name", "backend", "kernel_path", "initrd_path", "rootfs_path",
                                                  "boot_args", "vcpus", "memory_mib", "check_kind", "check_path",
                                                  "check_argv")}
            item = backend.image_add(spec)
            emit(item) if emit else print(item["id"], file=out)
        elif cmd == "ls":
            items = backend.image_ls()
            emit(items) if emit else _table(items, ["id", "name", "backend", "path"], out)
        elif cmd == "get":
            item = backend.image_get(args.image)
            emit(item) if emit else _show(item, out)
        elif cmd == "rm":
            backend.image_rm(args.image)
            emit({"ok": True}) if emit else print("removed", file=out)
    elif group == "snapshot":
        if cmd == "create":
            image = args.image
            if args.interactive:
                image = _choose_image(backend, out)
            if not image:
                raise CliError("snapshot create: name an image, or use -i to choose one", EXIT_USAGE)
            snap = backend.snapshot_create(image)
            if not args.no_wait:
                snap = _progress(backend, snap, sys.stderr if emit else out, out.isatty() and not emit)
            emit(snap) if emit else _show(snap, out)
            if snap["state"] == "unhealthy":
                return EXIT_FAILURE
        elif cmd == "ls":
            items = backend.snapshot_ls(args.image, args.all)
            emit(items) if emit else _table(
                items, ["id", "runtime_image_id", "state", "phase", "generation", "success_count", "failure_count"], out)
        elif cmd == "get":
            item = backend.snapshot_get(args.snapshot)
            emit(item) if emit else _show(item, out)
        elif cmd == "rebuild":
            item = backend.snapshot_rebuild(args.snapshot)
            emit(item) if emit else print(f"rebuild of {args.snapshot} queued", file=out)
        elif cmd == "rm":
            backend.snapshot_rm(args.snapshot)
            emit({"ok": True}) if emit else print("deleted", file=out)
    elif group == "container":
        if cmd == "run":
            item = backend.container_run(args.image, args.name)
            if emit:
                emit(item)
            else:
                _table([item], ["id", "state", "boot_method", "fallback_reason", "timings"], out)
        elif cmd == "ls":
            items = backend.container_ls()
            emit(items) if emit else _table(items, ["id", "name", "state", "boot_method", "fallback_reason"], out)
        elif cmd == "get":
            item = backend.container_get(args.container)
            emit(item) if emit else _show(item, out)
        elif cmd == "rm":
            backend.container_rm(args.container)
            emit({"ok": True}) if emit else print("destroyed", file=out)
    return EXIT_OK


def _choose_image(backend, out):
    images = backend.image_ls()
    if not images:
        raise CliError("no runtime images are registered; add one with `fcwarm image add`", EXIT_NOT_FOUND)
    for n, img in enumerate(images, 1):
        print(f"{n:3d}) {img['name']}  ({img['id']})", file=out)
    answer = input("image number: ").strip()
    if not answer.isdigit() or not 1 <= int(answer) <= len(images):
        raise CliError(f"'{answer}' is not a number between 1 and {len(images)}", EXIT_USAGE)
    return images[int(answer) - 1]["id"]


if __name__ == "__main__":
    sys.exit(main())
