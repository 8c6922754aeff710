"""Type stubs of fcwarm._core (the C++ library's bindings)."""
import datetime
import enum
from typing import Callable, Dict, List, Mapping, Optional, Sequence, TypedDict, Union, Unpack, overload

_Duration = Union[datetime.timedelta, float]

__version__: str
GUEST_PROTOCOL_VERSION: int
SCHEMA_VERSION: int

def status_table() -> List[Dict[str, Union[str, int]]]: ...

class _Labeled(enum.Enum):
    @property
    def label(self) -> str: ...

class SnapshotState(_Labeled):
    CREATING: SnapshotState
    READY: SnapshotState
    UNHEALTHY: SnapshotState
    DELETED: SnapshotState

class BuildPhase(_Labeled):
    QUEUED: BuildPhase
    FETCHING: BuildPhase
    BOOTING: BuildPhase
    WAITING_RUNTIME: BuildPhase
    PRELOADING: BuildPhase
    PARKING: BuildPhase
    QUIESCING: BuildPhase
    PAUSING: BuildPhase
    SNAPSHOTTING: BuildPhase
    VERIFYING: BuildPhase
    PUBLISHING: BuildPhase
    DONE: BuildPhase

class BootMethod(_Labeled):
    WARM: BootMethod
    COLD: BootMethod

class FallbackReason(_Labeled):
    NONE: FallbackReason
    NO_SNAPSHOT: FallbackReason
    SNAPSHOT_CREATING: FallbackReason
    SNAPSHOT_UNHEALTHY: FallbackReason
    INCOMPATIBLE: FallbackReason
    CORRUPT: FallbackReason
    RESTORE_FAILED: FallbackReason
    VERIFY_FAILED: FallbackReason

class VmState(_Labeled):
    STARTING: VmState
    RUNNING: VmState
    STOPPED: VmState
    DESTROYED: VmState
    FAILED: VmState
    LOST: VmState
    POOLED: VmState

def is_valid_id(text: str) -> bool: ...
def generate_id() -> str: ...
def format_rfc3339(unix_ms: int) -> str: ...
def parse_image_reference(text: str) -> Dict[str, str]: ...
def validate_name(field: str, name: str) -> None: ...

class RuntimeCheck:
    kind: str
    path: str
    argv: List[str]
    def __init__(self, kind: str = "none", path: str = "", argv: List[str] = ...) -> None: ...

class VmShape:
    vcpus: int
    memory_mib: int
    def __init__(self, vcpus: int = 1, memory_mib: int = 512) -> None: ...

class RuntimeImage:
    id: str
    name: str
    backend: str
    kernel_path: str
    initrd_path: str
    rootfs_path: str
    boot_args: str
    shape: VmShape
    runtime_check: RuntimeCheck
    preload_images: List[str]
    created_at: int
    path: str
    def __init__(self, name: str = "", backend: str = "", kernel_path: str = "", initrd_path: str = "",
                 rootfs_path: str = "", boot_args: str = "", vcpus: int = 1, memory_mib: int = 512,
                 runtime_check: RuntimeCheck = ..., preload_images: List[str] = ...) -> None: ...

class SnapshotFile:
    name: str
    size: int
    mtime_ns: int
    xxh3: str

class ParkedContainer:
    name: str
    docker_id: str
    image: str
    channel: str
    entrypoint: List[str]
    cmd: List[str]
    env: List[str]
    working_dir: str
    user: str

class RuntimeSnapshot:
    id: str
    runtime_image_id: str
    state: SnapshotState
    phase: BuildPhase
    generation: int
    generation_dir: str
    compatibility_key: str
    compatibility: Dict[str, str]
    size_bytes: int
    disk_bytes: int
    files: List[SnapshotFile]
    manifest_digest: str
    origin: str
    images: List[str]
    parked: List[ParkedContainer]
    success_count: int
    failure_count: int
    consecutive_failures: int
    build_failures: int
    last_error: str
    created_at: int
    updated_at: int
    last_used_at: Optional[int]

class VmRecord:
    id: str
    name: str
    runtime_image_id: str
    snapshot_id: str
    generation: int
    state: VmState
    boot_method: BootMethod
    fallback_reason: FallbackReason
    timings: Dict[str, float]
    work_dir: str
    address: str
    mac: str
    hostname: str
    last_error: str
    pooled: bool
    instance_id: str
    created_at: int
    updated_at: int

class Event:
    id: int
    time: int
    kind: str
    runtime_image_id: str
    snapshot_id: str
    vm_id: str
    outcome: str
    reason: str
    timings: Dict[str, float]
    message: str

class HealthStats:
    state: SnapshotState
    success_count: int
    failure_count: int
    consecutive_failures: int
    build_failures: int
    last_error: str
    last_used_at: Optional[int]

class BuildOutcome:
    snapshot_id: str
    runtime_image_id: str
    ok: bool
    generation: int
    build_failures: int
    error: str
    code: str
    timings: Dict[str, float]
    automatic: bool

class ReconcileReport:
    interrupted_builds: int
    removed_temp_dirs: int
    killed_processes: int
    lost_vms: int
    released_pooled_vms: int

class GcReport:
    removed_generations: int
    freed_bytes: int

class RepositoryGeneration:
    repo_key: str
    generation: str
    node: str
    created_at: int
    raw_bytes: int
    runtime_image: str

class RepositoryGcOptions:
    keep_newest: int
    keep_newer_than: datetime.timedelta
    dry_run: bool

class RepositoryGcReport:
    dry_run: bool
    deleted: List[RepositoryGeneration]
    kept: List[RepositoryGeneration]
    nodes: List[str]
    chunks_deleted: int
    chunk_bytes_deleted: int
    chunks_kept: int

class StoreOptions:
    path: str
    busy_timeout: datetime.timedelta

class SnapshotRepositoryOptions:
    url: str
    s3_endpoint: str
    s3_region: str
    credentials_file: str
    publish: bool
    fetch: bool
    workers: int

class CoordinationOptions:
    url: str
    lock_ttl: datetime.timedelta
    wait_for_build: datetime.timedelta

class SnapshotManagerOptions:
    root_dir: str
    build_dir: str
    build_workers: int
    max_snapshots_per_image: int
    max_snapshots_total: int
    agent_timeout: datetime.timedelta
    runtime_timeout: datetime.timedelta
    poll_interval: datetime.timedelta
    stop_grace: datetime.timedelta
    reconcile_processes: bool
    preload_images: List[str]
    pull_timeout: datetime.timedelta
    node_id: str
    repository: SnapshotRepositoryOptions
    coordination: CoordinationOptions

class HealthOptions:
    unhealthy_threshold: int
    auto_rebuild: bool
    rebuild_backoff_initial: datetime.timedelta
    rebuild_backoff_max: datetime.timedelta

class RestoreOptions:
    vm_dir: str
    wait_for_creating: datetime.timedelta
    restore_agent_timeout: datetime.timedelta
    cold_agent_timeout: datetime.timedelta
    restore_runtime_timeout: datetime.timedelta
    cold_runtime_timeout: datetime.timedelta
    poll_interval: datetime.timedelta
    full_verify_every: int
    address_pool_base: str
    address_pool_size: int
    allocate_network: bool
    stop_grace: datetime.timedelta
    fallback_to_cold: bool
    egress: str
    dns: List[str]
    registry_mirrors: List[str]
    insecure_registries: List[str]
    pool: Dict[str, int]
    pool_idle_timeout: datetime.timedelta
    stop_vms_on_exit: bool
    MAX_POOL_SIZE: int

class ContainerOptions:
    docker_timeout: datetime.timedelta
    pull_timeout: datetime.timedelta
    publish_address: str
    exec_timeout: datetime.timedelta
    docker_api_version: str
    default_runtime_image: str
    start_workers: int
    start_queue: int
    def __init__(self) -> None: ...

class ServiceOptions:
    store: StoreOptions
    snapshots: SnapshotManagerOptions
    health: HealthOptions
    restore: RestoreOptions
    containers: ContainerOptions
    @staticmethod
    def under_directory(data_dir: str) -> ServiceOptions: ...

class Store:
    schema_version: int
    path: str
    def events(self, kind: str = "", runtime_image_id: str = "", snapshot_id: str = "", after_id: int = 0,
               limit: int = 100, newest_first: bool = False) -> List[Event]: ...

class Vmm:
    kind: str
    def host_compatibility(self) -> Dict[str, str]: ...

class VmmRegistry:
    def __init__(self) -> None: ...
    def add(self, vmm: Vmm) -> None: ...
    def find(self, kind: str) -> Optional[Vmm]: ...
    def kinds(self) -> List[str]: ...

class QemuMemoryMode(enum.Enum):
    STREAM: QemuMemoryMode
    FILE: QemuMemoryMode

class QemuNetworkMode(enum.Enum):
    NETNS: QemuNetworkMode
    NONE: QemuNetworkMode

class QemuOptions:
    qemu_binary: str
    qemu_img_binary: str
    accelerator: str
    kernel_boot_args: str
    tcg_kernel_args: str
    memory_mode: QemuMemoryMode
    network_mode: QemuNetworkMode
    restore_timeout: datetime.timedelta
    verify_state_digest: bool

class BackendChoice:
    requested: str
    kind: str
    detail: str
    fell_back: bool

def select_backends(backends: Sequence[str] = ..., qemu: QemuOptions = ...,
                    firecracker: FirecrackerOptions = ...) -> "tuple[VmmRegistry, List[BackendChoice]]": ...
def make_qemu_vmm(options: QemuOptions = ...) -> Vmm: ...
def probe_qemu(options: QemuOptions = ...) -> None: ...

class FirecrackerOptions:
    binary: str
    api_timeout: datetime.timedelta
    snapshot_timeout: datetime.timedelta
    socket_wait: datetime.timedelta
    kernel_boot_args: str
    vsock_guest_cid: int
    agent_vsock_port: int
    tap_prefix: str
    netns_prefix: str

def make_firecracker_vmm(options: FirecrackerOptions = ...) -> Vmm: ...
def probe_firecracker(binary: str = "firecracker") -> Dict[str, str]: ...

def runtime_image_from_artifacts(kind: str, dir: str, backend: str = "qemu") -> RuntimeImage: ...

class ImageRegistry:
    def register(self, image: RuntimeImage) -> RuntimeImage: ...
    def get(self, id: str) -> RuntimeImage: ...
    def get_by_name(self, name: str) -> RuntimeImage: ...
    def list(self) -> List[RuntimeImage]: ...
    def remove(self, id: str) -> None: ...

class SnapshotManager:
    reconcile_report: ReconcileReport
    def create(self, runtime_image_id: str) -> RuntimeSnapshot: ...
    def get(self, id: str) -> RuntimeSnapshot: ...
    def list(self, runtime_image_id: str = "", state: Optional[SnapshotState] = None,
             include_deleted: bool = False) -> List[RuntimeSnapshot]: ...
    def rebuild(self, id: str) -> RuntimeSnapshot: ...
    def delete(self, id: str) -> None: ...
    def wait_while_creating(self, id: str, timeout: _Duration) -> RuntimeSnapshot: ...
    def collect_garbage(self) -> GcReport: ...
    def active_builds(self) -> int: ...
    def list_repository(self) -> List[RepositoryGeneration]: ...
    def collect_repository(self, options: RepositoryGcOptions) -> RepositoryGcReport: ...
    def add_build_listener(self, callback: Callable[[BuildOutcome], None]) -> int: ...
    def remove_build_listener(self, token: int) -> None: ...

class HealthTracker:
    automatic_rebuilds: int
    stale_outcomes: int
    pending_retries: int
    options: HealthOptions
    def record_success(self, snapshot_id: str, generation: int) -> None: ...
    def record_failure(self, snapshot_id: str, generation: int, error: str) -> None: ...
    def record_incompatible(self, snapshot_id: str, detail: str) -> None: ...
    def stats(self, snapshot_id: str) -> HealthStats: ...

class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    truncated: bool

class DockerRequest:
    method: str
    path: str
    body: str
    socket: str
    timeout: datetime.timedelta
    def __init__(self, method: str = "GET", path: str = "", body: Union[str, bytes] = "",
                 socket: str = "/var/run/docker.sock", timeout: _Duration = ...) -> None: ...

class DockerResponse:
    status: int
    body: bytes
    truncated: bool
    text: str
    def json(self) -> object: ...

class Vm:
    pid: int
    console_log: str
    def is_alive(self) -> bool: ...
    def ping(self, timeout: _Duration = ...) -> Dict[str, str]: ...
    def exec(self, argv: List[str], timeout: _Duration = ...) -> ExecResult: ...
    @overload
    def docker(self, request: DockerRequest) -> DockerResponse: ...
    @overload
    def docker(self, method: str, path: str, body: Optional[Union[str, bytes]] = None, *,
               socket: str = "/var/run/docker.sock", timeout: _Duration = ...) -> DockerResponse: ...

class RestoreEngine:
    def provision(self, runtime_image_id: str, name: str = "", wait_for_creating: Optional[_Duration] = None,
                  force_cold: bool = False) -> VmRecord: ...
    def stop(self, vm_id: str) -> None: ...
    def destroy(self, vm_id: str) -> None: ...
    def get(self, vm_id: str) -> VmRecord: ...
    def list(self, include_destroyed: bool = False) -> List[VmRecord]: ...
    def handle(self, vm_id: str) -> Vm: ...
    def measured_cold_boot_ms(self, runtime_image_id: str) -> Optional[float]: ...
    def set_after_restore_hook(self, hook: Optional[Callable[[str, Vm], None]]) -> None: ...
    def pool(self) -> List[PoolStatus]: ...
    def check_pool(self) -> None: ...

class PooledClone:
    vm_id: str
    snapshot_id: str
    generation: int
    ready_at: int
    pid: int
    pss_bytes: Optional[int]

class PoolStatus:
    image: str
    runtime_image_id: str
    target: int
    clones: List[PooledClone]
    filling: bool
    filled: int
    taken: int
    misses: int
    discarded: Dict[str, int]
    last_error: str

class ContainerState(_Labeled):
    PROVISIONING: ContainerState
    PULLING: ContainerState
    RUNNING: ContainerState
    EXITED: ContainerState
    STOPPED: ContainerState
    FAILED: ContainerState
    LOST: ContainerState
    DESTROYED: ContainerState
    @property
    def finished(self) -> bool: ...
    @staticmethod
    def parse(name: str) -> ContainerState: ...

class _RequestFields(TypedDict, total=False):
    """The keyword fields of a ContainerRequest (prepare/create/create_async)."""
    runtime_image: Optional[str]
    command: Optional[Sequence[str]]
    env: Optional[Mapping[str, str]]
    name: Optional[str]
    id: Optional[str]
    force_cold: bool
    wait_for_creating: Optional[_Duration]
    ports: Optional[Sequence[str]]
    working_dir: Optional[str]
    user: Optional[str]
    read_only: bool

class ContainerRequest:
    runtime_image: str
    id: str
    name: str
    image: str
    command: List[str]
    env: Dict[str, str]
    force_cold: bool
    wait_for_creating: Optional[datetime.timedelta]
    ports: List[str]
    working_dir: str
    user: str
    read_only: bool
    def __init__(self, image: Optional[str] = None, **fields: Unpack[_RequestFields]) -> None: ...

class ImagePull:
    layers: int
    bytes: int
    ms: float
    layers_total: int
    bytes_total: int
    done: bool

class ContainerRecord:
    # Fields in the order of the REST API's container item (docs/api.md), then what only Python has.
    id: str
    vm_id: Optional[str]
    name: str
    image: str
    runtime_image_id: str
    runtime: str
    state: ContainerState
    exit_code: Optional[int]
    docker_id: str
    boot_method: Optional[BootMethod]
    fallback_reason: FallbackReason
    timings: Dict[str, float]
    snapshot_id: str
    generation: int
    address: str
    ports: List[str]
    pull: Optional[ImagePull]
    mac: str
    hostname: str
    vm_state: str
    last_error: str
    created_at: int
    updated_at: int
    started_at: Optional[int]
    finished_at: Optional[int]
    command: List[str]
    env: Dict[str, str]
    working_dir: str
    user: str
    read_only: bool
    container_path: str
    container_path_reason: str

class ContainerLogs:
    stdout: bytes
    stderr: bytes
    stdout_text: str
    stderr_text: str
    truncated: bool

class ContainerManager:
    @overload
    def prepare(self, request: ContainerRequest) -> ContainerRecord: ...
    @overload
    def prepare(self, image: Optional[str] = None, **fields: Unpack[_RequestFields]) -> ContainerRecord: ...
    def start(self, id: str) -> ContainerRecord: ...
    @overload
    def create(self, request: ContainerRequest) -> ContainerRecord: ...
    @overload
    def create(self, image: Optional[str] = None, **fields: Unpack[_RequestFields]) -> ContainerRecord: ...
    @overload
    def create_async(self, request: ContainerRequest) -> ContainerRecord: ...
    @overload
    def create_async(self, image: Optional[str] = None, **fields: Unpack[_RequestFields]) -> ContainerRecord: ...
    def abandon(self, id: str, reason: str) -> None: ...
    def get(self, id: str) -> ContainerRecord: ...
    def list(self, include_destroyed: bool = False) -> List[ContainerRecord]: ...
    def wait(self, id: str, timeout: Optional[_Duration] = 30.0) -> ContainerRecord: ...
    def logs(self, id: str) -> ContainerLogs: ...
    def stop(self, id: str) -> ContainerRecord: ...
    def destroy(self, id: str) -> None: ...
    def provisioning(self) -> int: ...

class Service:
    @staticmethod
    def open(options: ServiceOptions, vmms: VmmRegistry) -> Service: ...
    store: Store
    vmms: VmmRegistry
    images: ImageRegistry
    snapshots: SnapshotManager
    health: HealthTracker
    engine: RestoreEngine
    containers: ContainerManager
