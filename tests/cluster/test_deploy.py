"""deploy/: the Kubernetes DaemonSet, the Nomad system job and deploy/fcwarm-node-labels (label `unit`, no root).

Neither Kubernetes nor Nomad is installable here, so the manifests are checked structurally: the YAML with
Debian's python3-yaml, the HCL with a small reader in this file (Debian 12 has no python3-hcl2). fcwarm-node-labels
runs against a fake fcwarm API (the JSON of docs/api.md) and, when FCWARM_SERVER_BIN is set, against the real
fcwarm-server with --backend none; kubectl and nomad are small fakes that keep a node's labels/meta in a file
and log every call, so the argv the script would run (--dry-run) and runs is checked for both engines."""

import hashlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
LABELS = os.path.join(DEPLOY, "fcwarm-node-labels")
SERVER_BIN = os.environ.get("FCWARM_SERVER_BIN", "")
PY = "/usr/bin/python3"

# The server's flags both manifests pass, and the values' variables. The repository/coordination flags are the
# ones issue 16 adds (docs/multi-host.md).
SERVER_FLAGS = {"--bind", "--data-dir", "--backend", "--auth-token-file", "--snapshot-repository", "--s3-endpoint",
                "--s3-region", "--coordination"}
REPOSITORY_FLAGS = {"--snapshot-repository", "--s3-endpoint", "--s3-region", "--coordination"}
K8S = "snapshot-ready.fcwarm.dev/"
NOMAD = "fcwarm.snapshot_ready."


def flag_pairs(args):
    """{"--flag": value} from ["--flag", "value", ...]; every flag takes a value here."""
    assert len(args) % 2 == 0, args
    out = {}
    for flag, value in zip(args[0::2], args[1::2]):
        assert flag.startswith("--") and not str(value).startswith("--"), (flag, value)
        assert flag not in out, f"{flag} given twice"
        out[flag] = value
    return out


# ---------------------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def k8s():
    yaml = pytest.importorskip("yaml", reason="python3-yaml (scripts/setup.sh)")
    with open(os.path.join(DEPLOY, "kubernetes", "fcwarm-daemonset.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    by_kind = {}
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), d
        by_kind.setdefault(d["kind"], []).append(d)
    return by_kind


def test_k8s_objects_and_namespace(k8s):
    assert sorted(k8s) == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Namespace", "Secret",
                           "ServiceAccount"]
    ns = k8s["Namespace"][0]["metadata"]["name"]
    for kind in ("ServiceAccount", "ConfigMap", "Secret", "DaemonSet"):
        for obj in k8s[kind]:
            assert obj["metadata"]["namespace"] == ns, (kind, obj["metadata"])
    assert k8s["DaemonSet"][0]["apiVersion"] == "apps/v1"


def test_k8s_daemonset_privileges_and_host_paths(k8s):
    ds = k8s["DaemonSet"][0]
    spec = ds["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["hostNetwork"] is True
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"server", "node-labels"}
    assert containers["server"]["securityContext"]["privileged"] is True
    # The sidecar needs no privileges at all.
    side = containers["node-labels"]["securityContext"]
    assert side.get("privileged") is not True and side["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    host = {v["hostPath"]["path"]: v["hostPath"].get("type") for v in volumes.values() if "hostPath" in v}
    assert host["/var/lib/fcwarm"] == "DirectoryOrCreate"
    assert host["/dev/kvm"] == "CharDevice" and host["/dev/net/tun"] == "CharDevice"
    assert "/run/netns" in host
    for c in containers.values():
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{c['name']} mounts unknown volume {m['name']}"
    mounts = {m["mountPath"]: m for m in containers["server"]["volumeMounts"]}
    assert volumes[mounts["/var/lib/fcwarm"]["name"]]["hostPath"]["path"] == "/var/lib/fcwarm"
    assert mounts["/run/netns"].get("mountPropagation") == "Bidirectional"
    # The liveness probe reaches the loopback-bound API from the kubelet (host network).
    probe = containers["server"]["livenessProbe"]["httpGet"]
    assert (probe["host"], probe["port"], probe["path"]) == ("127.0.0.1", 18080, "/healthz")


def test_k8s_server_flags_and_their_variables(k8s):
    pod = k8s["DaemonSet"][0]["spec"]["template"]["spec"]
    server = {c["name"]: c for c in pod["containers"]}["server"]
    assert server["command"] == ["/usr/local/bin/fcwarm-server"]
    flags = flag_pairs(server["args"])
    assert set(flags) == SERVER_FLAGS
    assert flags["--data-dir"] == "/var/lib/fcwarm" and flags["--bind"] == "127.0.0.1:18080"
    env = {e["name"]: e for e in server["env"]}
    config = k8s["ConfigMap"][0]
    secrets = {s["metadata"]["name"]: s for s in k8s["Secret"]}
    # Every $(VAR) in the arguments is defined, from the ConfigMap, with a key the ConfigMap has.
    for flag in REPOSITORY_FLAGS:
        m = re.fullmatch(r"\$\((\w+)\)", flags[flag])
        assert m, f"{flag} is not taken from a variable: {flags[flag]}"
        ref = env[m.group(1)]["valueFrom"]["configMapKeyRef"]
        assert ref["name"] == config["metadata"]["name"] and ref["key"] in config["data"]
    assert config["data"]["FCWARM_SNAPSHOT_REPOSITORY"].startswith("s3://")
    assert config["data"]["FCWARM_COORDINATION"].startswith("etcd://")
    assert re.match(r"https?://", config["data"]["FCWARM_S3_ENDPOINT"])
    # S3 credentials: the standard variables, from a Secret that has those keys; never literal values.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"]
        assert "value" not in env[name]
    # The API token file comes from the Secret volume.
    token_dir = os.path.dirname(flags["--auth-token-file"])
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[token_dir]]["secret"]["secretName"] in secrets


def test_k8s_sidecar_and_rbac(k8s):
    pod = k8s["DaemonSet"][0]["spec"]["template"]["spec"]
    side = {c["name"]: c for c in pod["containers"]}["node-labels"]
    assert side["command"] == ["/usr/local/bin/fcwarm-node-labels"]
    flags = flag_pairs(side["args"])
    assert flags["--engine"] == "kubernetes" and flags["--node"] == "$(NODE_NAME)"
    assert flags["--server"] == "http://127.0.0.1:18080"
    env = {e["name"]: e for e in side["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # RBAC: exactly get and patch on nodes, bound to the pod's service account.
    role = k8s["ClusterRole"][0]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    binding = k8s["ClusterRoleBinding"][0]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    sa = k8s["ServiceAccount"][0]["metadata"]
    assert {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]} in binding["subjects"]
    assert pod["serviceAccountName"] == sa["name"]


# ---------------------------------------------------------------------------------------------------------
# A structural HCL reader (Debian 12 has no python3-hcl2)
# ---------------------------------------------------------------------------------------------------------

class HclError(ValueError):
    pass


class Ref(str):
    """A bare expression (a traversal such as var.data_dir), kept as text."""


class Block:
    def __init__(self, type_, labels):
        self.type, self.labels, self.attrs, self.blocks = type_, labels, {}, []

    def all(self, type_):
        return [b for b in self.blocks if b.type == type_]

    def one(self, type_, *labels):
        found = [b for b in self.blocks if b.type == type_ and tuple(b.labels[:len(labels)]) == labels]
        assert len(found) == 1, f"expected one {type_} {labels}, found {len(found)}"
        return found[0]


def hcl_tokens(text):
    """Tokens: ("ident", s), ("string", s), ("number", n), ("punct", c). Comments, heredocs and string escapes
    and interpolations are handled; anything else is an HclError with the line."""
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#" or text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise HclError(f"line {line}: unterminated /* comment")
            line += text.count("\n", i, j)
            i = j + 2
        elif text.startswith("<<", i):
            m = re.compile(r"<<(-?)([A-Za-z_][A-Za-z0-9_]*)\n").match(text, i)
            if not m:
                raise HclError(f"line {line}: malformed heredoc")
            body, j = [], m.end()
            while True:
                k = text.find("\n", j)
                if k < 0:
                    raise HclError(f"line {line}: heredoc {m.group(2)} is not terminated")
                row = text[j:k]
                j = k + 1
                if row.strip() == m.group(2):
                    break
                body.append(row)
            line += text.count("\n", i, j) - 1
            i = j - 1  # leave the newline
            yield ("string", "\n".join(body) + "\n")
        elif c == '"':
            j, out, depth = i + 1, [], 0
            while True:
                if j >= n or (text[j] == "\n" and depth == 0):
                    raise HclError(f"line {line}: unterminated string")
                ch = text[j]
                if ch == "\\" and depth == 0:
                    esc = text[j + 1:j + 2]
                    out.append({"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(esc, "\\" + esc))
                    j += 2
                    continue
                if text.startswith("${", j):
                    depth += 1
                    out.append("${")
                    j += 2
                    continue
                if ch == '"' and depth:  # a string inside an interpolation: copied as is
                    k = j + 1
                    while k < n and text[k] not in '"\n':
                        k += 2 if text[k] == "\\" else 1
                    if k >= n or text[k] != '"':
                        raise HclError(f"line {line}: unterminated string in an interpolation")
                    out.append(text[j:k + 1])
                    j = k + 1
                    continue
                if ch == "}" and depth:
                    depth -= 1
                elif ch == '"' and depth == 0:
                    break
                out.append(ch)
                j += 1
            yield ("string", "".join(out))
            i = j + 1
        elif c.isalpha() or c == "_":
            m = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*").match(text, i)
            yield ("ident", m.group(0))
            i = m.end()
        elif c.isdigit():
            m = re.compile(r"[0-9]+(\.[0-9]+)?").match(text, i)
            yield ("number", float(m.group(0)) if m.group(1) else int(m.group(0)))
            i = m.end()
        elif c in "{}[]=,:":
            yield ("punct", c)
            i += 1
        else:
            raise HclError(f"line {line}: unexpected character {c!r}")


def parse_hcl(text):
    """The top-level body as a Block("", []): attributes (name = value) and nested blocks
    (type "label" ... { body }). Unbalanced braces, duplicate attributes and stray tokens are HclErrors."""
    toks = list(hcl_tokens(text))
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else ("eof", None)

    def take(kind=None, value=None):
        nonlocal pos
        tok = peek()
        if tok[0] == "eof" or (kind and tok[0] != kind) or (value is not None and tok[1] != value):
            raise HclError(f"expected {value or kind}, found {tok}")
        pos += 1
        return tok

    def value():
        kind, v = peek()
        if kind in ("string", "number"):
            take()
            return v
        if kind == "ident":
            take()
            return {"true": True, "false": False, "null": None}.get(v, Ref(v))
        if (kind, v) == ("punct", "["):
            take()
            items = []
            while peek() != ("punct", "]"):
                items.append(value())
                if peek() == ("punct", ","):
                    take()
                elif peek() != ("punct", "]"):
                    raise HclError(f"expected , or ] in a list, found {peek()}")
            take("punct", "]")
            return items
        if (kind, v) == ("punct", "{"):
            take()
            obj = {}
            while peek() != ("punct", "}"):
                k = take()[1]
                if peek()[1] not in ("=", ":"):
                    raise HclError(f"expected = in an object, found {peek()}")
                take()
                obj[k] = value()
                if peek() == ("punct", ","):
                    take()
            take("punct", "}")
            return obj
        raise HclError(f"unexpected {peek()} where a value belongs")

    def body(block, closing):
        while True:
            kind, v = peek()
            if closing and (kind, v) == ("punct", "}"):
                take()
                return block
            if kind == "eof":
                if closing:
                    raise HclError(f"block {block.type} {block.labels} is not closed")
                return block
            name = take("ident")[1]
            if peek() == ("punct", "="):
                take()
                if name in block.attrs:
                    raise HclError(f"attribute {name} given twice in {block.type} {block.labels}")
                block.attrs[name] = value()
                continue
            labels = []
            while peek()[0] in ("string", "ident"):
                labels.append(take()[1])
            take("punct", "{")
            block.blocks.append(body(Block(name, labels), True))

    return body(Block("", []), False)


def test_hcl_reader_rejects_what_is_broken():
    assert parse_hcl('a = "x" # c\nb { c = [1, "two", var.x,] }').one("b").attrs["c"] == [1, "two", Ref("var.x")]
    assert parse_hcl('t = "${a.b} \\"q\\" ${f("}")}"').attrs["t"] == '${a.b} "q" ${f("}")}'
    for bad, why in (('job "x" {\n  type = "system"\n', "not closed"), ('a = "open\n', "unterminated string"),
                     ("a = 1\na = 2\n", "given twice"), ("x {\n}\n}\n", "expected ident"),
                     ("d = <<EOT\nno end\n", "not terminated"), ("a = [1 2]", "expected , or ]")):
        with pytest.raises(HclError, match=why):
            parse_hcl(bad)


@pytest.fixture(scope="module")
def nomad():
    with open(os.path.join(DEPLOY, "nomad", "fcwarm.nomad.hcl")) as f:
        top = parse_hcl(f.read())
    variables = {b.labels[0]: b.attrs.get("default") for b in top.all("variable")}
    return top, variables


def resolve(v, variables):
    """var.X -> X's default; "${var.X}/..." -> interpolated; Nomad's runtime ${...} stay as they are."""
    if isinstance(v, Ref):
        assert v.startswith("var.") and v[4:] in variables, f"{v} is not a declared variable"
        return variables[v[4:]]
    for name in re.findall(r"\$\{var\.([A-Za-z0-9_]+)\}", v):
        assert name in variables, f"var.{name} is not declared"
        v = v.replace("${var." + name + "}", variables[name])
    return v


def test_nomad_system_job_with_raw_exec(nomad):
    top, variables = nomad
    job = top.one("job", "fcwarm")
    assert job.attrs["type"] == "system"
    group = job.one("group")
    tasks = {t.labels[0]: t for t in group.all("task")}
    assert set(tasks) == {"server", "node-meta"}
    for t in tasks.values():
        assert t.attrs["driver"] == "raw_exec"
    assert {c.attrs["attribute"]: c.attrs["value"] for c in job.all("constraint")} == {
        "${attr.kernel.name}": "linux", "${attr.cpu.arch}": "amd64"}


def test_nomad_server_flags_credentials_and_sidecar(nomad):
    top, variables = nomad
    group = top.one("job", "fcwarm").one("group")
    server = group.one("task", "server")
    config = server.one("config")
    assert resolve(config.attrs["command"], variables) == "/usr/local/bin/fcwarm-server"
    flags = {k: resolve(v, variables) for k, v in flag_pairs(config.attrs["args"]).items()}
    assert set(flags) == SERVER_FLAGS
    assert flags["--snapshot-repository"].startswith("s3://")
    assert flags["--coordination"].startswith("etcd://")
    assert re.match(r"https?://", flags["--s3-endpoint"])
    assert flags["--data-dir"] == variables["data_dir"] and flags["--bind"] == "127.0.0.1:18080"
    # Credentials: a template rendered into the task's environment from a Nomad variable.
    env_templates = [t for t in server.all("template") if t.attrs.get("env") is True]
    assert len(env_templates) == 1
    data = env_templates[0].attrs["data"]
    assert "nomadVar" in data and re.search(r"^\s*AWS_ACCESS_KEY_ID=\{\{", data, re.M) and \
        re.search(r"^\s*AWS_SECRET_ACCESS_KEY=\{\{", data, re.M)
    assert env_templates[0].attrs["destination"].startswith("${NOMAD_SECRETS_DIR}/")
    side = group.one("task", "node-meta")
    lifecycle = side.one("lifecycle")
    assert lifecycle.attrs == {"hook": "poststart", "sidecar": True}
    sflags = flag_pairs(side.one("config").attrs["args"])
    assert sflags["--engine"] == "nomad" and sflags["--node"] == "${node.unique.id}"
    assert sflags["--server"] == "http://127.0.0.1:18080"
    assert sflags["--token-file"] == flags["--auth-token-file"]


def test_both_manifests_pass_the_same_server_flags(k8s, nomad):
    pod = k8s["DaemonSet"][0]["spec"]["template"]["spec"]
    k8s_flags = set(flag_pairs({c["name"]: c for c in pod["containers"]}["server"]["args"]))
    top, _ = nomad
    nomad_flags = set(flag_pairs(top.one("job", "fcwarm").one("group").one("task", "server").one("config")
                                 .attrs["args"]))
    assert k8s_flags == nomad_flags == SERVER_FLAGS


def test_manifest_flags_exist_in_the_server():
    """Every flag the manifests pass is one fcwarm-server knows (its --help), the repository and coordination
    flags included."""
    if not SERVER_BIN or not os.path.exists(SERVER_BIN):
        pytest.skip("FCWARM_SERVER_BIN is not set")
    text = subprocess.run([SERVER_BIN, "--help"], capture_output=True, text=True, timeout=30).stdout
    known = set(re.findall(r"(--[a-z0-9-]+)", text))
    assert SERVER_FLAGS - REPOSITORY_FLAGS <= known
    assert REPOSITORY_FLAGS <= known, sorted(REPOSITORY_FLAGS - known)


# ---------------------------------------------------------------------------------------------------------
# fcwarm-node-labels
# ---------------------------------------------------------------------------------------------------------

FAKE_CLI = r'''#!/usr/bin/python3
# A fake %(engine)s CLI: the node's labels/meta live in $FAKE_STATE (JSON), every call is logged to $FAKE_LOG.
import json, os, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\n")
state_path = os.environ["FAKE_STATE"]
with open(state_path) as f:
    state = json.load(f)
engine = "%(engine)s"
if engine == "kubectl":
    if argv[:2] == ["get", "node"] and argv[3:] == ["-o", "json"]:
        if argv[2] != state["node"]:
            sys.exit('Error from server (NotFound): nodes "%%s" not found' %% argv[2])
        print(json.dumps({"kind": "Node", "metadata": {"name": argv[2], "labels": state["labels"]}}))
        sys.exit(0)
    if argv[:3] == ["label", "node", state["node"]] and "--overwrite" in argv:
        for a in argv[3:]:
            if a == "--overwrite":
                continue
            if a.endswith("-"):
                state["labels"].pop(a[:-1], None)
            else:
                k, v = a.split("=", 1)
                state["labels"][k] = v
else:
    if argv[:3] == ["node", "meta", "read"]:
        print(json.dumps({"Meta": dict(state["static"], **{k: v for k, v in state["labels"].items() if v is not None}),
                          "Dynamic": state["labels"], "Static": state["static"]}))
        sys.exit(0)
    if argv[:5] == ["node", "meta", "apply", "-node-id", state["node"]]:
        rest = argv[5:]
        if rest and rest[0] == "-unset":
            for k in rest[1].split(","):
                state["labels"][k] = None
            rest = rest[2:]
        for a in rest:
            k, v = a.split("=", 1)
            state["labels"][k] = v
    else:
        sys.exit("unexpected " + json.dumps(argv))
with open(state_path + ".tmp", "w") as f:  # atomically: the test reads the state while this runs
    json.dump(state, f)
os.replace(state_path + ".tmp", state_path)
'''

KEY_DOCKER = "0123456789abcdef0123456789abcdef"
KEY_DOCKER_OLD = "ffffffffffffffffffffffffffffffff"
KEY_MINIMAL = "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb"
KEY_ODD = "cccccccccccccccccccccccccccccccc"


def snapshot(sid, image_id, state, key):
    """An item as GET /v1/runtime-snapshots returns it (docs/api.md, the fields the script reads and more)."""
    return {"id": sid, "runtime_image_id": image_id, "state": state, "phase": "done", "generation": 1,
            "generation_dir": "", "compatibility_key": key if state == "ready" else "", "compatibility": {},
            "size_bytes": 0, "disk_bytes": 0, "files": [], "manifest_digest": "", "images": [], "parked": [],
            "success_count": 0, "failure_count": 0, "consecutive_failures": 0, "build_failures": 0,
            "last_error": "", "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "last_used_at": None}


class FakeApi:
    """A tiny fcwarm API on 127.0.0.1 serving the documented JSON; requires the bearer token when given."""

    def __init__(self, token=None):
        self.token = token
        self.images = [{"id": "img-docker", "name": "docker"}, {"id": "img-minimal", "name": "minimal"},
                       {"id": "img-odd", "name": "-odd"}, {"id": "img-cold", "name": "cold"}]
        # Newest first, as the server lists them.
        self.snapshots = [snapshot("s5", "img-docker", "ready", KEY_DOCKER),
                          snapshot("s4", "img-docker", "ready", KEY_DOCKER_OLD),
                          snapshot("s3", "img-minimal", "ready", KEY_MINIMAL),
                          snapshot("s2", "img-odd", "ready", KEY_ODD),
                          snapshot("s1", "img-cold", "unhealthy", "")]
        self.requests = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                api.requests.append((self.path, self.headers.get("Authorization")))
                if api.token and self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self.reply(401, {"error": {"code": "unauthenticated", "message": "token"}})
                if self.path == "/v1/images":
                    return self.reply(200, {"items": api.images})
                if self.path.startswith("/v1/runtime-snapshots"):
                    items = api.snapshots
                    m = re.search(r"[?&]state=(\w+)", self.path)
                    if m:
                        items = [s for s in items if s["state"] == m.group(1)]
                    return self.reply(200, {"items": items})
                self.reply(404, {"error": {"code": "not_found", "message": self.path}})

            def reply(self, status, doc):
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api():
    a = FakeApi()
    yield a
    a.close()


class FakeNode:
    """A fake kubectl or nomad binary plus the node state it serves."""

    def __init__(self, tmp, engine, node, labels, static=None):
        self.engine, self.node = engine, node
        self.bin = os.path.join(tmp, engine)
        with open(self.bin, "w") as f:
            f.write(FAKE_CLI % {"engine": engine})
        os.chmod(self.bin, 0o755)
        self.state_path = os.path.join(tmp, f"{engine}-state.json")
        self.log_path = os.path.join(tmp, f"{engine}-calls.log")
        with open(self.state_path, "w") as f:
            json.dump({"node": node, "labels": labels, "static": static or {}}, f)
        open(self.log_path, "w").close()
        self.env = dict(os.environ, FAKE_STATE=self.state_path, FAKE_LOG=self.log_path)

    @property
    def labels(self):
        with open(self.state_path) as f:
            return json.load(f)["labels"]

    @property
    def calls(self):
        with open(self.log_path) as f:
            return [json.loads(line) for line in f]

    def argv(self, *extra, server):
        engine = "kubernetes" if self.engine == "kubectl" else "nomad"
        return [PY, LABELS, "--engine", engine, "--node", self.node, "--server", server,
                f"--{self.engine}", self.bin] + list(extra)

    def run(self, *extra, server, timeout=30):
        return subprocess.run(self.argv(*extra, server=server), capture_output=True, text=True, timeout=timeout,
                              env=self.env)


def test_kubernetes_dry_run_sets_changed_and_removes_stale(api, tmp_path):
    node = FakeNode(str(tmp_path), "kubectl", "node-1", {
        "kubernetes.io/hostname": "node-1",                       # not ours: untouched
        K8S + "docker": KEY_DOCKER_OLD,                           # ours, outdated value
        K8S + "minimal": KEY_MINIMAL,                             # ours, up to date
        K8S + "gone": "dddddddddddddddddddddddddddddddd"})        # ours, no longer ready: stale
    before = node.labels
    p = node.run("--once", "--dry-run", server=api.url)
    assert p.returncode == 0, p.stderr
    printed = [json.loads(line) for line in p.stdout.splitlines()]
    odd = "x-" + hashlib.sha256(b"-odd").hexdigest()[:16]
    assert printed == [[node.bin, "label", "node", "node-1", "--overwrite", f"{K8S}docker={KEY_DOCKER}",
                        f"{K8S}{odd}={KEY_ODD}", f"{K8S}gone-"]]
    assert f"'-odd' is not a valid label name; its label is {K8S}{odd}" in p.stderr
    # Dry run: only the read ran, nothing changed.
    assert node.calls == [["get", "node", "node-1", "-o", "json"]]
    assert node.labels == before
    # The newest ready snapshot of an image wins; the unhealthy image gets no label.
    assert not any("cold" in a for a in printed[0])


def test_kubernetes_applies_then_is_idempotent(api, tmp_path):
    node = FakeNode(str(tmp_path), "kubectl", "node-1", {"kubernetes.io/hostname": "node-1", K8S + "gone": "x"})
    p = node.run("--once", server=api.url)
    assert p.returncode == 0, p.stderr
    labels = node.labels
    assert labels["kubernetes.io/hostname"] == "node-1"
    assert {k: v for k, v in labels.items() if k.startswith(K8S)} == {
        K8S + "docker": KEY_DOCKER, K8S + "minimal": KEY_MINIMAL,
        K8S + "x-" + hashlib.sha256(b"-odd").hexdigest()[:16]: KEY_ODD}
    assert [c[0] for c in node.calls] == ["get", "label"]
    # A second pass finds the node in sync: it reads, changes nothing.
    p = node.run("--once", server=api.url)
    assert p.returncode == 0 and p.stdout == ""
    assert [c[0] for c in node.calls] == ["get", "label", "get"]
    # A snapshot stops being ready: its label goes.
    api.snapshots = [s for s in api.snapshots if s["runtime_image_id"] != "img-minimal"]
    assert node.run("--once", server=api.url).returncode == 0
    assert K8S + "minimal" not in node.labels and node.calls[-1] == ["label", "node", "node-1", "--overwrite",
                                                                      K8S + "minimal-"]


def test_nomad_dry_run_and_apply(api, tmp_path):
    node = FakeNode(str(tmp_path), "nomad", "9f1c2a7e-node", {
        NOMAD + "docker": KEY_DOCKER,          # up to date
        NOMAD + "old": "x",                    # stale
        NOMAD + "unset-before": None,          # unset dynamic entry (null): not ours to remove again
        "rack": "r1"}, static={"connect.log_level": "info"})
    p = node.run("--once", "--dry-run", server=api.url)
    assert p.returncode == 0, p.stderr
    assert [json.loads(line) for line in p.stdout.splitlines()] == [
        [node.bin, "node", "meta", "apply", "-node-id", "9f1c2a7e-node", "-unset", NOMAD + "old",
         f"{NOMAD}-odd={KEY_ODD}", f"{NOMAD}minimal={KEY_MINIMAL}"]]
    assert node.calls == [["node", "meta", "read", "-json", "-node-id", "9f1c2a7e-node"]]
    p = node.run("--once", server=api.url)
    assert p.returncode == 0, p.stderr
    assert {k: v for k, v in node.labels.items() if v is not None} == {
        NOMAD + "docker": KEY_DOCKER, NOMAD + "minimal": KEY_MINIMAL, NOMAD + "-odd": KEY_ODD, "rack": "r1"}


def test_token_is_sent_and_a_wrong_one_fails(tmp_path):
    api = FakeApi(token="t0ken")
    try:
        node = FakeNode(str(tmp_path), "kubectl", "n", {})
        token = tmp_path / "token"
        token.write_text("t0ken\n")
        p = node.run("--once", "--dry-run", "--token-file", str(token), server=api.url)
        assert p.returncode == 0 and len(p.stdout.splitlines()) == 1, p.stderr
        assert ("/v1/images", "Bearer t0ken") in api.requests
        token.write_text("wrong\n")
        p = node.run("--once", "--dry-run", "--token-file", str(token), server=api.url)
        assert p.returncode == 1 and p.stdout == ""
        assert "answered 401" in p.stderr
    finally:
        api.close()


def test_bad_arguments_are_named(tmp_path):
    node = FakeNode(str(tmp_path), "kubectl", "n", {})
    env = {k: v for k, v in node.env.items() if k not in ("NODE_NAME", "NOMAD_NODE_ID")}
    p = subprocess.run([PY, LABELS, "--engine", "kubernetes"], capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 2 and "--node" in p.stderr
    p = subprocess.run([PY, LABELS, "--engine", "swarm", "--node", "n"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--engine" in p.stderr
    p = subprocess.run([PY, LABELS, "--engine", "nomad", "--node", "n", "--server", "127.0.0.1:18080"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--server" in p.stderr
    # The engine's CLI failing is reported (not a dry run: nothing is assumed).
    p = subprocess.run([PY, LABELS, "--engine", "kubernetes", "--node", "other", "--once", "--kubectl", node.bin,
                        "--server", "http://127.0.0.1:9"], capture_output=True, text=True, env=node.env, timeout=30)
    assert p.returncode == 1


def test_unreachable_server_once_fails_without_changes(tmp_path):
    node = FakeNode(str(tmp_path), "kubectl", "n", {K8S + "docker": KEY_DOCKER})
    with socket_port() as port:
        p = node.run("--once", server=f"http://127.0.0.1:{port}")
    assert p.returncode == 1 and "GET http://127.0.0.1:" in p.stderr
    assert node.labels == {K8S + "docker": KEY_DOCKER} and node.calls == []


class socket_port:
    """A loopback port that refuses connections (bound, not listening) while the context lasts."""

    def __enter__(self):
        import socket
        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc):
        self.s.close()


def wait_for(pred, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_loop_removes_everything_when_the_server_goes_away_and_on_sigterm(tmp_path):
    api = FakeApi()
    node = FakeNode(str(tmp_path), "kubectl", "n", {"other": "1"})
    p = subprocess.Popen(node.argv("--interval", "0.2", "--stale-after", "1", server=api.url), env=node.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: K8S + "docker" in node.labels)
        api.close()  # the server goes away: after --stale-after every fcwarm label goes
        assert wait_for(lambda: node.labels == {"other": "1"}), node.labels
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    _, err = p.communicate()
    assert "removing every fcwarm entry" in err

    # SIGTERM while in sync removes the labels; --keep-on-exit leaves them.
    for keep in (False, True):
        api = FakeApi()
        try:
            node = FakeNode(str(tmp_path), "kubectl", "n", {})
            extra = ["--interval", "0.2"] + (["--keep-on-exit"] if keep else [])
            p = subprocess.Popen(node.argv(*extra, server=api.url), env=node.env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            assert wait_for(lambda: len(node.labels) == 3)
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=20) == 0
            assert (len(node.labels) == 3) == keep
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            api.close()


def test_against_the_real_server_with_backend_none(tmp_path):
    """The script reads the real API: an image whose build failed (backend none) gets no label, and a stale
    label for it is removed."""
    if not SERVER_BIN or not os.path.exists(SERVER_BIN):
        pytest.skip("FCWARM_SERVER_BIN is not set")
    data = tmp_path / "data"
    port_file = tmp_path / "port"
    log = open(tmp_path / "server.log", "wb")
    srv = subprocess.Popen([SERVER_BIN, "--data-dir", str(data), "--port-file", str(port_file), "--bind",
                            "127.0.0.1:0", "--backend", "none", "--egress", "none", "--stop-vms-on-exit"],
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: port_file.exists() and port_file.read_text().strip()), "no port file"
        url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        kernel = tmp_path / "vmlinuz"
        kernel.write_bytes(b"not a kernel")
        import urllib.request

        def post(path, body):
            req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())

        def get(path):
            with urllib.request.urlopen(url + path, timeout=10) as r:
                return json.loads(r.read())

        img = post("/v1/images", {"name": "web", "backend": "none", "kernel_path": str(kernel)})["item"]
        sid = post("/v1/runtime-snapshots", {"runtime_image_id": img["id"]})["id"]
        assert wait_for(lambda: get("/v1/runtime-snapshots/" + sid)["item"]["state"] == "unhealthy")
        node = FakeNode(str(tmp_path), "kubectl", "node-1", {K8S + "web": KEY_DOCKER, "x": "y"})
        p = node.run("--once", "--dry-run", server=url)
        assert p.returncode == 0, p.stderr
        assert [json.loads(line) for line in p.stdout.splitlines()] == [
            [node.bin, "label", "node", "node-1", "--overwrite", K8S + "web-"]]
        node = FakeNode(str(tmp_path), "nomad", "nid", {NOMAD + "web": KEY_DOCKER})
        p = node.run("--once", server=url)
        assert p.returncode == 0, p.stderr
        assert node.labels == {NOMAD + "web": None}
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        log.close()


def test_deploy_files_need_no_third_party_modules():
    """fcwarm-node-labels runs with the standard library only (it is copied into images as is)."""
    with open(LABELS) as f:
        src = f.read()
    imported = set(re.findall(r"^import (\w+)", src, re.M)) | set(re.findall(r"^from (\w+)", src, re.M))
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    assert os.access(LABELS, os.X_OK) and src.startswith("#!/usr/bin/python3\n")
