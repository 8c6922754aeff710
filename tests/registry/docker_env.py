"""What the docker-tier tests of this directory share (test_preload.py, test_parked.py): the docker runtime image
they boot, whether they must run, why they would skip, and the host's fcwarm rules they compare before and after."""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "support"))
import registry  # noqa: E402

IMAGE_DIR = os.environ.get("FCWARM_DOCKER_IMAGE_DIR", "/var/cache/fcwarm/guest/docker-current")
FILES = ("bzImage", "initramfs.cpio.gz", "docker-rootfs.ext4")
REQUIRE = os.environ.get("FCWARM_REQUIRE_REGISTRY") == "1" or os.environ.get("FCWARM_REQUIRE_DOCKER") == "1"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def skip_reason():
    """Why these tests cannot run here ("" when they can)."""
    why = []
    missing = registry.required_tools()
    if missing:
        why.append("missing " + ", ".join(missing))
    if os.geteuid() != 0:
        why.append("not root")
    if not shutil.which("iptables-save"):
        why.append("iptables is not installed")
    if not shutil.which("qemu-system-x86_64"):
        why.append("qemu-system-x86_64 is not installed")
    absent = [f for f in FILES if not os.path.isfile(os.path.join(IMAGE_DIR, f))]
    if absent:
        why.append(f"docker runtime image files missing in {IMAGE_DIR}: {absent}")
    return "; ".join(why)


def fcwarm_rules():
    """Lines of the host's rule set that mention fcwarm (its chains and tagged rules)."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30, check=True).stdout
    return [line for line in out.splitlines() if "fcwarm" in line.lower()]
