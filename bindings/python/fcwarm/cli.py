"""The ``fcwarm`` command: manage runtime images, snapshots and containers.

Works on the library directly (``--data-dir``, default /var/lib/fcwarm) or on a running fcwarm-server
(``--server http://127.0.0.1:18080``). Tables for humans by default, ``--json`` for scripts.

Exit codes: 0 success, 1 failure, 2 usage error or invalid argument, 3 not found, 4 conflict.
"""

import argparse
import functools
import json
import math
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT = 0, 1, 2, 3, 4

PHASES = ["queued", "booting", "waiting_runtime", "preloading", "parking", "quiescing", "pausing", "snapshotting", "verifying",
          "publishing", "done"]


class CliError(Exception):
    def __init__(self, message, exit_code=EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


def _is_terminal(state):
    """True once a container (state name as in the REST API) can no longer change by itself: the library's
    IsTerminal(ContainerState), exposed as ContainerState.finished."""
    from . import _core

    return _core.ContainerState.parse(state).finished


def _exit_code_for(code):
    """The CLI exit code of a library error code name (the library's status table; REST errors carry the same
    names)."""
    from . import _core

    for row in _core.status_table():
        if row["name"] == code:
            return row["cli_exit_code"]
    return EXIT_FAILURE


# ---- value conversion ---------------------------------------------------------------------------------------

def _plain(value):
    """Converts library objects to JSON-able dicts (same field names as the REST API)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    from . import _core

    if isinstance(value, _core.ContainerRecord):
        return _container_item(value)
    if isinstance(value, _core.ContainerLogs):
        return {"stdout": value.stdout_text, "stderr": value.stderr_text, "truncated": value.truncated}
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


def _container_item(c):
    """A ContainerRecord in the REST API's shape (GET /v1/containers/{id})."""
    from . import _core

    return {
        "id": c.id,
        "vm_id": c.vm_id,
        "name": c.name,
        "image": c.image,
        "runtime_image_id": c.runtime_image_id,
        "runtime": c.runtime,
        "state": c.state.label,
        "exit_code": c.exit_code,
        "docker_id": c.docker_id,
        "boot_method": c.boot_method.label if c.boot_method is not None else None,
        "fallback_reason": None if c.fallback_reason == _core.FallbackReason.NONE else c.fallback_reason.label,
        "timings": dict(c.timings),
        "snapshot_id": c.snapshot_id,
        "generation": c.generation,
        "address": c.address.split("/")[0],
        "ports": list(c.ports),
        "pull": None if c.pull is None else {"layers": c.pull.layers, "layers_total": c.pull.layers_total,
                                             "bytes": c.pull.bytes, "bytes_total": c.pull.bytes_total,
                                             "ms": c.pull.ms, "done": c.pull.done},
        "mac": c.mac,
        "hostname": c.hostname,
        "vm_state": c.vm_state,
        "last_error": c.last_error,
        "created_at": _core.format_rfc3339(c.created_at),
        "updated_at": _core.format_rfc3339(c.updated_at),
        "started_at": None if c.started_at is None else _core.format_rfc3339(c.started_at),
        "finished_at": None if c.finished_at is None else _core.format_rfc3339(c.finished_at),
        "command": list(c.command),
        "env": dict(c.env),
        "working_dir": c.working_dir,
        "user": c.user,
        "read_only": c.read_only,
        "container_path": c.container_path or None,
        "container_path_reason": c.container_path_reason or None,
    }


# ---- backends -----------------------------------------------------------------------------------------------

def default_vmms():
    """The backends this host can run: the library's `auto` selection (QEMU when it can run here)."""
    from . import _core

    vmms, _choices = _core.select_backends(["auto"])
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
        self._started = []

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

    def container_run(self, spec):
        rec = self.svc.containers.create(spec["image"] or None, runtime_image=spec["runtime_image"] or None,
                                         command=spec["command"], env=spec["env"], name=spec["name"] or None,
                                         force_cold=spec["force_cold"], ports=spec["ports"],
                                         working_dir=spec["working_dir"] or None, user=spec["user"] or None,
                                         read_only=spec["read_only"])
        self._started.append(rec.id)
        # Get refreshes a docker container from its daemon: one that exited already is recorded with its output.
        return _plain(self.svc.containers.get(rec.id))

    def container_ls(self, include_destroyed):
        return [_plain(c) for c in self.svc.containers.list(include_destroyed)]

    def container_get(self, cid):
        return _plain(self.svc.containers.get(cid))

    def container_wait(self, cid, timeout):
        return _plain(self.svc.containers.wait(cid, timeout))

    def container_logs(self, cid):
        return _plain(self.svc.containers.logs(cid))

    def container_stop(self, cid):
        return _plain(self.svc.containers.stop(cid))

    def container_rm(self, cid):
        self.svc.containers.destroy(cid)

    def close(self):
        """A container's VM is a child of this process and cannot outlive it: stop the containers this command
        started that still run, so that they are recorded as stopped, with their output, instead of being found
        lost by the next command."""
        for cid in self._started:
            try:
                if self.svc.containers.get(cid).state == self.fcwarm.ContainerState.RUNNING:
                    self.svc.containers.stop(cid)
                    print(f"fcwarm: container {cid} stopped: in library mode a container lives only as long as "
                          "the command that started it (use --wait, or --server for long-running containers)",
                          file=sys.stderr)
            except self.fcwarm.Error as e:
                print(f"fcwarm: warning: could not stop container {cid}: {e}", file=sys.stderr)
        self._started = []


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
            raise CliError(message, _exit_code_for(code))
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

    # The server caps one wait request at 600 s (timeout_ms 0..600000).
    MAX_WAIT_MS = 600000

    def container_run(self, spec):
        # The server answers once the container runs ("wait" defaults to true).
        body = {}
        if spec["name"]:
            body["name"] = spec["name"]
        if spec["image"]:
            body["image"] = spec["image"]
        if spec["runtime_image"]:
            body["runtime_image"] = spec["runtime_image"]
        if spec["command"]:
            body["command"] = list(spec["command"])
        if spec["env"]:
            body["env"] = dict(spec["env"])
        if spec["force_cold"]:
            body["force_cold"] = True
        if spec["working_dir"]:
            body["working_dir"] = spec["working_dir"]
        if spec["user"]:
            body["user"] = spec["user"]
        if spec["read_only"]:
            body["read_only"] = True
        if spec["ports"]:
            body["ports"] = list(spec["ports"])
        return self._call("POST", "/v1/containers", body)["item"]

    def _container_path(self, cid, suffix=""):
        return f"/v1/containers/{urllib.parse.quote(cid, safe='')}{suffix}"

    def container_ls(self, include_destroyed):
        q = {"include_destroyed": "true"} if include_destroyed else None
        return self._call("GET", "/v1/containers", query=q)["items"]

    def container_get(self, cid):
        return self._call("GET", self._container_path(cid))["item"]

    def container_wait(self, cid, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left_ms = self.MAX_WAIT_MS
            if deadline is not None:
                left_ms = max(0, min(self.MAX_WAIT_MS, int((deadline - time.monotonic()) * 1000)))
            item = self._call("POST", self._container_path(cid, "/wait"), query={"timeout_ms": str(left_ms)})["item"]
            if _is_terminal(item["state"]):
                return item
            if deadline is not None and time.monotonic() >= deadline:
                return item

    def container_logs(self, cid):
        return self._call("GET", self._container_path(cid, "/logs"))

    def container_stop(self, cid):
        return self._call("POST", self._container_path(cid, "/stop"))["item"]

    def container_rm(self, cid):
        self._call("DELETE", self._container_path(cid))

    def close(self):
        pass


# ---- output -------------------------------------------------------------------------------------------------

def _console(out, terminal=None):
    """A rich Console writing to `out`. On a terminal: colours and the terminal's width. Anywhere else (a pipe, a
    file, a StringIO): no colour or control codes whatever FORCE_COLOR says, and no width limit, so that table
    rows are never wrapped or cut."""
    from rich.console import Console

    if terminal is None:
        terminal = out.isatty()
    return Console(file=out, force_terminal=terminal, no_color=not terminal or None, highlight=False,
                   width=None if terminal else 1 << 20)


def _text(value):
    """A cell as literal text: rich must not read '[...]' as markup or ':name:' as an emoji."""
    from rich.text import Text

    return Text(str(value))


def _field(row, column):
    value = row.get(column, "")
    if column == "timings" and isinstance(value, dict):
        return " ".join(f"{k}={v:.0f}ms" for k, v in sorted(value.items()))
    if value is None:
        return "-"
    return value


class _View:
    """Where a command's result goes: JSON with `--json` (sorted keys, two-space indent: scripts depend on the
    bytes), rich tables otherwise."""

    def __init__(self, out, as_json):
        self.out = out
        self.json = as_json

    @functools.cached_property
    def console(self):
        return _console(self.out)  # rich is imported only for human output

    def emit(self, obj):
        print(json.dumps(obj, indent=2, sort_keys=True), file=self.out)

    def message(self, obj, text):
        """`obj` as JSON, or the one-line `text`."""
        self.emit(obj) if self.json else print(text, file=self.out)

    def table(self, rows, columns, obj=None):
        """`rows` (dicts) as a table of `columns` (upper-case headers, "-" for null), or `obj` (default: the
        rows) as JSON."""
        if self.json:
            self.emit(rows if obj is None else obj)
        elif not rows:
            print("(none)", file=self.out)
        else:
            self._print(self._grid([_text(c.upper()) for c in columns],
                                   [[_text(_field(r, c)) for c in columns] for r in rows]))

    def show(self, obj):
        """One object: a key/value list sorted by key (nested values as JSON), or the object as JSON."""
        if self.json:
            self.emit(obj)
            return
        rows = []
        for key in sorted(obj):
            value = obj[key]
            if isinstance(value, (dict, list)):
                value = json.dumps(value, sort_keys=True)
            rows.append([_text(key), _text(value)])
        self._print(self._grid(None, rows))

    def _grid(self, header, rows):
        from rich.table import Table

        # Columns two spaces apart, no borders, upper-case headers: the layout scripts and tests read from a pipe.
        table = Table(box=None, show_header=header is not None, show_edge=False, pad_edge=False,
                      padding=(0, 1), header_style="bold", highlight=False)
        for title in header or [""] * len(rows[0]):
            table.add_column(title, no_wrap=True, overflow="ignore")
        for row in rows:
            table.add_row(*row)
        return table

    def _print(self, table):
        if self.console.is_terminal:
            self.console.print(table)
            return
        # rich pads every cell to its column's width; a pipe gets the lines without trailing blanks.
        with self.console.capture() as captured:
            self.console.print(table)
        for line in captured.get().splitlines():
            print(line.rstrip(), file=self.out)


def _progress(backend, snap, out, terminal):
    """Polls the snapshot until it leaves `creating`: a rich progress bar over the build phases on a terminal,
    one line per phase otherwise (logs, pipes, `--json` on stderr)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = _console(out, terminal)
    columns = (TextColumn("{task.description:<16}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not terminal) as bar:
        task = bar.add_task("queued", total=len(PHASES))
        last = None
        while snap["state"] == "creating":
            phase = snap.get("phase", "queued")
            if phase != last:
                step = PHASES.index(phase) + 1 if phase in PHASES else 1
                bar.update(task, completed=step, description=phase)
                if not terminal:
                    print(f"snapshot {snap['id']}: {phase} ({step}/{len(PHASES)})", file=out, flush=True)
                last = phase
            time.sleep(0.2)
            snap = backend.snapshot_get(snap["id"])
        bar.update(task, completed=len(PHASES), description=snap["state"])
    return snap


# ---- commands -----------------------------------------------------------------------------------------------
# Each command is `fn(backend, args, view)`, attached to its sub-parser with set_defaults(func=fn); it returns the
# exit code (None: success) or raises CliError.

_IMAGE_FIELDS = ("name", "backend", "kernel_path", "initrd_path", "rootfs_path", "boot_args", "vcpus", "memory_mib",
                 "check_kind", "check_path", "check_argv", "preload_images")


def _image_add(backend, args, view):
    item = backend.image_add({k: getattr(args, k) for k in _IMAGE_FIELDS})
    view.message(item, item["id"])


def _image_ls(backend, args, view):
    view.table(backend.image_ls(), ["id", "name", "backend", "path"])


def _image_get(backend, args, view):
    view.show(backend.image_get(args.image))


def _image_rm(backend, args, view):
    backend.image_rm(args.image)
    view.message({"ok": True}, "removed")


def _snapshot_create(backend, args, view):
    image = _choose_image(backend, view.out) if args.interactive else args.image
    if not image:
        raise CliError("snapshot create: name an image, or use -i to choose one", EXIT_USAGE)
    snap = backend.snapshot_create(image)
    if not args.no_wait:
        # With --json the progress goes to stderr, as lines: stdout carries only the JSON.
        snap = _progress(backend, snap, sys.stderr if view.json else view.out,
                         view.out.isatty() and not view.json)
    view.show(snap)
    if not view.json and snap["state"] == "ready":
        size = sum(f.get("size", 0) for f in snap.get("files") or [])
        print(f"snapshot {snap['id']} is ready: {size / (1 << 20):.1f} MiB on disk", file=view.out)
    return EXIT_FAILURE if snap["state"] == "unhealthy" else EXIT_OK


def _snapshot_ls(backend, args, view):
    view.table(backend.snapshot_ls(args.image, args.all),
               ["id", "runtime_image_id", "state", "phase", "generation", "success_count", "failure_count"])


def _snapshot_get(backend, args, view):
    view.show(backend.snapshot_get(args.snapshot))


def _snapshot_rebuild(backend, args, view):
    view.message(backend.snapshot_rebuild(args.snapshot), f"rebuild of {args.snapshot} queued")


def _snapshot_rm(backend, args, view):
    backend.snapshot_rm(args.snapshot)
    view.message({"ok": True}, "deleted")


def _container_ls(backend, args, view):
    view.table(backend.container_ls(args.all),
               ["id", "name", "runtime", "state", "exit_code", "boot_method", "fallback_reason"])


def _container_get(backend, args, view):
    view.show(backend.container_get(args.container))


def _container_wait(backend, args, view):
    timeout = _check_timeout(args.timeout)
    item = backend.container_wait(args.container, timeout)
    view.table([item], ["id", "state", "exit_code", "last_error"], item)
    if not _is_terminal(item["state"]):
        raise CliError(f"container {item['id']} is still {item['state']} after {timeout:g} s")


def _container_logs(backend, args, view):
    logs = backend.container_logs(args.container)
    view.emit(logs) if view.json else _print_logs(logs, view.out)


def _container_stop(backend, args, view):
    item = backend.container_stop(args.container)
    view.table([item], ["id", "state", "exit_code"], item)


def _container_rm(backend, args, view):
    backend.container_rm(args.container)
    view.message({"ok": True}, "destroyed")


def _print_logs(logs, out):
    out.write(logs["stdout"])
    out.flush()
    sys.stderr.write(logs["stderr"])
    sys.stderr.flush()
    if logs.get("truncated"):
        print("fcwarm: (output truncated at 1 MiB per stream)", file=sys.stderr)


def _container_run(backend, args, view):
    timeout = _check_timeout(args.timeout)
    if timeout is not None and not args.wait:
        raise CliError("--timeout applies to --wait only", EXIT_USAGE)
    spec = {"image": args.image or "", "name": args.name, "runtime_image": args.runtime_image,
            "command": list(args.command), "env": _parse_env(args.env), "force_cold": args.force_cold,
            "ports": list(args.publish), "working_dir": args.workdir, "user": args.user,
            "read_only": args.read_only}
    item = backend.container_run(spec)
    if not args.wait:
        view.table([item], ["id", "state", "boot_method", "fallback_reason", "timings"], item)
        return EXIT_OK
    item = backend.container_wait(item["id"], timeout)
    state = item["state"]
    logs = None
    if state not in ("provisioning", "pulling", "failed"):
        from .errors import Error

        try:
            logs = backend.container_logs(item["id"])
        except (CliError, Error):
            logs = None  # e.g. a `vm` container without a command has no output
    if view.json:
        view.emit({"item": item, "logs": logs})
    elif logs is not None:
        _print_logs(logs, view.out)
    if state == "exited" and item.get("exit_code") == 0:
        return EXIT_OK
    if state == "exited":
        raise CliError(f"container {item['id']} exited with code {item.get('exit_code')}")
    if not _is_terminal(state):
        raise CliError(f"container {item['id']} is still {state} after {timeout:g} s")
    detail = f": {item['last_error']}" if item.get("last_error") else ""
    raise CliError(f"container {item['id']} is {state}{detail}")


def _choose_image(backend, out):
    """The container runtime images (runtime check kind docker) when there are any, else every image; one
    candidate is taken without asking."""
    images = backend.image_ls()
    if not images:
        raise CliError("no runtime images are registered; add one with `fcwarm image add`", EXIT_NOT_FOUND)
    runtimes = [i for i in images if (i.get("runtime_check") or {}).get("kind") == "docker"]
    if runtimes:
        images = runtimes
    images = sorted(images, key=lambda i: i["name"])
    if len(images) == 1:
        kind = "container runtime image" if runtimes else "runtime image"
        print(f"using the only {kind}: {images[0]['name']} ({images[0]['id']})", file=out)
        return images[0]["id"]
    print("container runtime images:" if runtimes else "runtime images:", file=out)
    for n, img in enumerate(images, 1):
        print(f"{n:3d}) {img['name']}  ({img['id']})", file=out)
    answer = input("image number: ").strip()
    if not answer.isdigit() or not 1 <= int(answer) <= len(images):
        raise CliError(f"'{answer}' is not a number between 1 and {len(images)}", EXIT_USAGE)
    return images[int(answer) - 1]["id"]


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
    p.set_defaults(func=None)
    sub = p.add_subparsers(dest="group")

    def command(group, name, func, **kwargs):
        parser = group.add_parser(name, **kwargs)
        parser.set_defaults(func=func)
        return parser

    img = sub.add_parser("image", help="runtime images").add_subparsers(dest="cmd", required=True)
    add = command(img, "add", _image_add, help="register an image")
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
    add.add_argument("--preload-image", action="append", default=[], dest="preload_images", metavar="REF",
                     help="container image every snapshot build pulls before the snapshot (repeatable; "
                          "container runtime images only)")
    command(img, "ls", _image_ls, help="list images")
    command(img, "get", _image_get, help="show an image").add_argument("image")
    command(img, "rm", _image_rm, help="remove an image").add_argument("image")

    snap = sub.add_parser("snapshot", help="runtime snapshots").add_subparsers(dest="cmd", required=True)
    c = command(snap, "create", _snapshot_create, help="build a runtime snapshot (progress bar over the build phases)")
    c.add_argument("image", nargs="?", help="image id or name (omit with -i)")
    c.add_argument("-i", "--interactive", action="store_true", help="choose the image from a list")
    c.add_argument("--no-wait", action="store_true", help="return once the build is queued")
    ls = command(snap, "ls", _snapshot_ls, help="list snapshots")
    ls.add_argument("--image", default="")
    ls.add_argument("--all", action="store_true", help="include deleted snapshots")
    for name, func, helptext in (("get", _snapshot_get, "show a snapshot"),
                                 ("rebuild", _snapshot_rebuild, "rebuild a snapshot"),
                                 ("rm", _snapshot_rm, "delete a snapshot")):
        command(snap, name, func, help=helptext).add_argument("snapshot")

    cont = sub.add_parser("container", help="containers, each in its own VM of a runtime image").add_subparsers(
        dest="cmd", required=True)
    run = command(
        cont, "run", _container_run, help="start a container: its VM warm from the snapshot when possible",
        usage="fcwarm container run [IMAGE] [--runtime-image R] [--name N] [--env K=V ...] [-p PORTS ...] "
              "[-w DIR] [-u USER[:GROUP]] [--read-only] [--force-cold] "
              "[--wait [--timeout S]] [-- COMMAND [ARG ...]]",
        description="Starts container image IMAGE (a Docker reference such as nginx:alpine) in a new VM of a "
                    "container runtime image: --runtime-image (id or name), else the default one. Without IMAGE, "
                    "--runtime-image names a VM-only runtime image and the command runs in the VM. The command "
                    "after `--` is the container's command (docker) or runs in the VM. No shell is involved.")
    run.add_argument("image", nargs="?", default="", help="container image reference, e.g. nginx:alpine")
    run.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    run.add_argument("--name", default="")
    run.add_argument("--runtime-image", default="",
                     help="runtime image (id or name) of the VM; default: the server's default container runtime")
    run.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                     help="environment variable (repeatable); a bare K takes its value from this environment")
    run.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:][HOST_PORT:]PORT[/PROTO]",
                     help="publish a container port on the host, Docker's syntax (repeatable), e.g. 8080:80")
    run.add_argument("-w", "--workdir", default="", metavar="DIR", help="working directory (absolute)")
    run.add_argument("-u", "--user", default="", metavar="USER[:GROUP]", help="user of the command")
    run.add_argument("--read-only", action="store_true", help="read-only root filesystem of the container")
    run.add_argument("--force-cold", action="store_true", help="skip the warm path (cold boot)")
    run.add_argument("--wait", action="store_true",
                     help="wait for the container to exit, print its output and exit 0 only if it exited 0")
    run.add_argument("--timeout", type=float, default=None, metavar="S",
                     help="with --wait: give up after S seconds (default: no limit)")
    ls = command(cont, "ls", _container_ls, help="list containers")
    ls.add_argument("--all", action="store_true", help="include destroyed containers")
    for name, func, helptext in (("get", _container_get, "show a container"),
                                 ("rm", _container_rm, "destroy a container"),
                                 ("logs", _container_logs, "print a container's output (stdout, and stderr on stderr)"),
                                 ("stop", _container_stop, "stop a container (its output is kept)")):
        command(cont, name, func, help=helptext).add_argument("container")
    w = command(cont, "wait", _container_wait, help="wait until a container exits (or the timeout passes)")
    w.add_argument("container")
    w.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds (default 30)")
    return p


def _split_trailing_command(argv):
    """`container run ... -- CMD ARGS`: everything after the first `--` is the command, verbatim (argparse alone
    mis-parses options placed between IMAGE and `--`). Other commands keep argparse's own handling of `--`."""
    if "--" not in argv:
        return argv, None
    i = argv.index("--")
    head = argv[:i]
    if any(head[j] == "container" and head[j + 1] == "run" for j in range(len(head) - 1)):
        return head, argv[i + 1:]
    return argv, None


def _parse_env(items):
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name:
            raise CliError(f"--env '{item}': expected NAME=VALUE", EXIT_USAGE)
        if not sep:
            if name not in os.environ:
                raise CliError(f"--env {name}: expected NAME=VALUE ({name} is not set in this environment)",
                               EXIT_USAGE)
            value = os.environ[name]
        env[name] = value
    return env


def _check_timeout(value, option="--timeout"):
    if value is not None and (not math.isfinite(value) or value < 0):
        raise CliError(f"{option}: must be a number of seconds >= 0, not {value}", EXIT_USAGE)
    return value


def main(argv=None, out=None, vmms=None):
    """Runs the CLI; returns the exit code. `vmms` overrides the backends of library mode (for embedding)."""
    out = out or sys.stdout
    parser = _parser()
    argv, trailing = _split_trailing_command(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    if trailing is not None:
        # `run IMAGE CMD -- ARGS`: the command started before `--`, which then belongs to it.
        args.command = args.command + ["--"] + trailing if args.command else trailing
    if args.version:
        import fcwarm

        print(f"fcwarm {fcwarm.__version__}", file=out)
        return EXIT_OK
    if args.func is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        import fcwarm

        try:
            return _run(args, out, vmms)
        except fcwarm.Error as e:
            code = getattr(e, "code", "internal")
            raise CliError(str(e), _exit_code_for(code))
    except CliError as e:
        print(f"fcwarm: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _run(args, out, vmms):
    backend = RestBackend(args.server, args.token) if args.server else LocalBackend(args.data_dir, vmms)
    try:
        code = args.func(backend, args, _View(out, args.json))
        return EXIT_OK if code is None else code
    finally:
        backend.close()


if __name__ == "__main__":
    sys.exit(main())
