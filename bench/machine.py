"""What this machine is and offers: memory counters, page-table sampling, sizes to measure at.

Every figure is sized from what the machine has right now (free memory, `/dev/shm`
space, the hugetlb pool), so the suite runs on a laptop and on a large server alike,
and never holds more than `SHARED_BUDGET` of shared memory at once (other people's
tests may share the machine).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

SHARED_BUDGET = 10 * GiB
# A benchmark child is a Python interpreter with numpy and one peer imported.
CHILD_FOOTPRINT = 64 * MiB


def meminfo() -> dict[str, int]:
    """/proc/meminfo as a dict; values in KiB (HugePages_* lines are page counts)."""
    values = {}
    with open("/proc/meminfo") as lines:
        for line in lines:
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0])
    return values


def pagetables_kib() -> int:
    """System-wide page-table memory: the only figure that counts a shared PMD table once.

    The kernel keeps this counter in per-CPU batches folded about once a second, so a read
    right after a change can miss hundreds of KiB; `settle_counters()` first folds them.
    """
    return meminfo()["PageTables"]


def settle_counters() -> None:
    """Fold the kernel's per-CPU memory counters into /proc/meminfo, or wait until it has."""
    try:
        with open("/proc/sys/vm/stat_refresh", "w") as refresh:
            refresh.write("1")
    except OSError:
        # Only root may ask for the fold; everyone else waits out one folding interval.
        time.sleep(float(_read("/proc/sys/vm/stat_interval", "1")) * 1.5)


def vmpte_kib(pid: int | str = "self") -> int:
    """Page-table memory charged to one process (counts a shared table in every sharer)."""
    with open(f"/proc/{pid}/status") as lines:
        for line in lines:
            if line.startswith("VmPTE:"):
                return int(line.split()[1])
    return 0


def _read(path: str, default: str = "") -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return default


def _mounts(fstype: str) -> list[str]:
    found = []
    for line in _read("/proc/mounts").splitlines():
        device, mountpoint, kind, options = line.split()[:4]
        if kind == fstype:
            found.append(f"{mountpoint} ({options})")
    return found


def shm_free_bytes() -> int:
    stats = os.statvfs("/dev/shm")
    return stats.f_bavail * stats.f_frsize


def hugetlb_pool() -> dict[str, int]:
    info = meminfo()
    return {
        "page_size": info["Hugepagesize"] * KiB,
        "total_pages": info["HugePages_Total"],
        "free_pages": info["HugePages_Free"] - info["HugePages_Rsvd"],
    }


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def source_revision() -> dict:
    """The commit the measured mshare was built from and whether the tree was clean:
    ``{"commit": SHA or None, "clean": bool, "changes": [paths]}``."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*arguments):
        try:
            result = subprocess.run(["git", "-C", here, *arguments], capture_output=True,
                                    text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout if result.returncode == 0 else None

    commit = (git("rev-parse", "HEAD") or "").strip() or None
    status = git("status", "--porcelain", "--untracked-files=no")
    changes = [line[3:] for line in (status or "").splitlines()]
    return {"commit": commit, "clean": commit is not None and status == "", "changes": changes}


def source_problem(source: dict) -> str | None:
    """Why figures measured from ``source`` cannot be quoted, or None."""
    if source.get("commit") is None:
        return "not measured from a git checkout: no commit to name"
    if not source.get("clean"):
        return (f"measured from a tree with uncommitted changes to {', '.join(source['changes'])}"
                " on top of " + source["commit"][:12])
    return None


def describe() -> dict:
    """The facts a reader needs to judge the numbers, stored next to them."""
    info = meminfo()
    pool = hugetlb_pool()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_total_gib": round(info["MemTotal"] / GiB * KiB, 1),
        "memory_available_gib": round(info["MemAvailable"] / GiB * KiB, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "hugetlb_pool": f"{pool['total_pages']} x {pool['page_size'] // KiB} KiB pages, "
        f"{pool['free_pages']} free",
        "hugetlbfs_mounts": _mounts("hugetlbfs"),
        "tmpfs_mounts": _mounts("tmpfs"),
        "thp_shmem_enabled": _read("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
        "dev_shm_free_gib": round(shm_free_bytes() / GiB, 1),
        "source": source_revision(),
        "versions": {name: _version(name) for name in
                     ("mshare", "numpy", "posix_ipc", "SharedArray", "pytest-benchmark",
                      "faster-fifo", "iceoryx2")},
    }


@dataclass
class Sizes:
    """Everything the suite measures at; printed in the header and stored in the results."""

    smoke: bool
    small_region: int
    attach_touch_sizes: list[int] = field(default_factory=list)
    process_counts: list[int] = field(default_factory=list)
    pagetable_region: int = 0
    pagetable_sizes: list[int] = field(default_factory=list)
    pagetable_size_processes: int = 0
    scan_region: int = 0
    scan_workers: list[int] = field(default_factory=list)
    attach_touch_rounds: int = 3
    fleet_rounds: int = 3

    def as_dict(self) -> dict:
        return asdict(self)


def human(size: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size / MiB:.1f} MiB"


def largest_region() -> int:
    """The largest single region this machine can hold right now without crowding anyone."""
    available = meminfo()["MemAvailable"] * KiB
    return min(4 * GiB, SHARED_BUDGET // 2, available // 3, shm_free_bytes() * 8 // 10)


def plan_sizes(smoke: bool) -> Sizes:
    """The issue's sizes (1 and 4 GiB, 1..64 processes), cut to what fits; tiny ones in smoke mode."""
    cpus = os.cpu_count() or 1
    if smoke:
        return Sizes(
            smoke=True, small_region=2 * MiB,
            attach_touch_sizes=[4 * MiB, 16 * MiB], process_counts=[1, 2],
            pagetable_region=16 * MiB, pagetable_sizes=[8 * MiB, 16 * MiB],
            pagetable_size_processes=2, scan_region=16 * MiB, scan_workers=[1, 2],
            attach_touch_rounds=1, fleet_rounds=1,
        )
    largest = largest_region()
    available = meminfo()["MemAvailable"] * KiB

    def fitting(sizes: list[int]) -> list[int]:
        return [size for size in sizes if size <= largest] or [largest // GiB * GiB or largest]

    # Children, each with its own interpreter and page tables, may use a quarter of free memory.
    most_children = max(2, available // 4 // (CHILD_FOOTPRINT + 2 * MiB))
    return Sizes(
        smoke=False, small_region=2 * MiB,
        attach_touch_sizes=fitting([64 * MiB, 256 * MiB, 1 * GiB, 4 * GiB]),
        process_counts=[n for n in (1, 2, 4, 8, 16, 32, 64) if n <= most_children],
        pagetable_region=min(1 * GiB, largest),
        pagetable_sizes=fitting([256 * MiB, 1 * GiB, 2 * GiB, 4 * GiB]),
        pagetable_size_processes=min(8, most_children),
        scan_region=min(1 * GiB, largest),
        scan_workers=sorted({1, max(2, cpus)}),
    )
