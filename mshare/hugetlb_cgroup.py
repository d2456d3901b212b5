"""Whether a hugetlb cgroup limits the huge pages this process may fault in.

The hugetlb controller charges a page to the cgroup of the process whose touch allocates
it, and a touch past the limit is a ``SIGBUS``. A region's pages allocated at ``create``
(``fallocate``) are charged there, once, and never again at any touch; pages left to the
mapping's reservation are charged at first touch. So a creator under such a limit
allocates at ``create``, where going over it is a clean error.

cgroup v2: ``hugetlb.<size>.max`` ("max" for none) in the process's cgroup and each
ancestor, under the unified mount; v1: ``hugetlb.<size>.limit_in_bytes`` in the hugetlb
hierarchy (a limit at or above 2**62 bytes is the kernel's "unlimited").
"""

import os
from typing import Dict, Iterator, List, Tuple

from mshare import machine

UNLIMITED_BYTES = 1 << 62
CGROUP2 = "cgroup2"
CGROUP1 = "cgroup"

_known: Dict[int, bool] = {}  # page size -> limited; a process keeps its cgroup


def fault_limited(page_size: int) -> bool:
    """True when a cgroup of this process (or an ancestor) caps huge pages of
    ``page_size`` below the kernel's unlimited; checked once per process."""
    limited = _known.get(page_size)
    if limited is None:
        limited = _known[page_size] = any(
            _finite(path) for path in _limit_files(_size_name(page_size)))
    return limited


def _size_name(page_size: int) -> str:
    """The kernel's name of a page size in hugetlb cgroup files: 2MB, 1GB, 64KB."""
    for unit, shift in (("GB", 30), ("MB", 20), ("KB", 10)):
        if page_size >= 1 << shift and page_size % (1 << shift) == 0:
            return f"{page_size >> shift}{unit}"
    return f"{page_size}B"


def _limit_files(size_name: str) -> Iterator[str]:
    """The limit files of every cgroup this process is in, and of their ancestors."""
    for version, relative in _memberships():
        for mount in machine.visible_mounts(version):
            if version == CGROUP1 and "hugetlb" not in mount.options:
                continue
            name = (f"hugetlb.{size_name}.max" if version == CGROUP2
                    else f"hugetlb.{size_name}.limit_in_bytes")
            for directory in _ancestors(mount.mount_point, relative):
                yield os.path.join(directory, name)


def _memberships() -> List[Tuple[str, str]]:
    """(``cgroup2`` or ``cgroup``, path inside the hierarchy) of each hierarchy that can
    hold a hugetlb limit for this process, from ``/proc/self/cgroup``."""
    try:
        with open("/proc/self/cgroup") as lines:
            found = []
            for line in lines:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    found.append((CGROUP2, path))
                elif "hugetlb" in controllers.split(","):
                    found.append((CGROUP1, path))
            return found
    except (OSError, ValueError):
        return []


def _ancestors(mount_point: str, relative: str) -> Iterator[str]:
    """The cgroup's directory under ``mount_point``, then its parents up to the mount."""
    parts = [part for part in relative.split("/") if part]
    for depth in range(len(parts), -1, -1):
        yield os.path.join(mount_point, *parts[:depth])


def _finite(path: str) -> bool:
    try:
        with open(path) as limit:
            text = limit.read().strip()
    except OSError:
        return False  # no such controller or page size there: no limit from it
    return text != "max" and text.isdigit() and int(text) < UNLIMITED_BYTES
