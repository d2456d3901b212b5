"""What this machine offers for huge pages: its mounts, its hugetlb pools and its
transparent-huge-page settings.

Everything is read from ``/proc`` and ``/sys`` on every call, never cached, with one
exception that is exactly as fresh: an administrator may mount, unmount or resize a pool
at any moment, and a decision made on stale facts would point a region at a file system
that is no longer there. The mount table is parsed again only when the kernel says it
changed (``/proc/self/mountinfo`` polls ``POLLPRI`` after every mount and unmount in the
namespace, see proc(5)), which spares every huge-page attach two reads of it. Within one
call of the library (``one_mount_view``) every lookup sees the table its first lookup
checked: one namespace check and poll per call, not one per lookup.
"""

import functools
import os
import re
import threading
from contextvars import ContextVar
from typing import Callable, Dict, List, NamedTuple, Optional, ParamSpec, TypeVar

from mshare._core import mount_table_unchanged
from mshare.owned import open_descriptor

HUGETLBFS = "hugetlbfs"
TMPFS = "tmpfs"
HUGEPAGES_SYSFS = "/sys/kernel/mm/hugepages"
THP_SYSFS = "/sys/kernel/mm/transparent_hugepage"
# tmpfs ``huge=`` policies under which a mapping advised with MADV_HUGEPAGE gets huge
# pages ("never" and "deny" are the others).
HUGE_TMPFS_POLICIES = ("always", "within_size", "advise")
_ESCAPE = re.compile(r"\\([0-7]{3})")


class Mount(NamedTuple):
    """One line of ``/proc/self/mountinfo``."""

    mount_point: str
    fstype: str
    device: int
    options: Dict[str, str]

    @property
    def huge_policy(self) -> str:
        """A tmpfs mount's ``huge=`` option (``"never"`` when absent)."""
        return self.options.get("huge", "never")


class _Snapshot(NamedTuple):
    """One parse of the mount table, with the lookups every call makes ready-made."""

    mounts: List[Mount]
    by_point: Dict[str, Mount]  # the visible (last) mount of each mount point
    by_device: Dict[int, Mount]  # the last mount of each device

    @classmethod
    def of(cls, mounts: List[Mount]) -> "_Snapshot":
        return cls(mounts, {mount.mount_point: mount for mount in mounts},
                   {mount.device: mount for mount in mounts})


class _MountTable:
    """The parsed mount table of one process and mount namespace, kept with the open
    ``mountinfo`` it came from: that descriptor reports any later change as ``POLLPRI``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # The mount namespace it belongs to, as its link names it (b"mnt:[INODE]").
        self.namespace: Optional[bytes] = None
        self.file = None
        self.snapshot = _Snapshot.of([])

    def current(self) -> _Snapshot:
        # One thread at a time: the poll that reports a change also consumes it, so
        # another thread must not return the old table meanwhile.
        with self.lock:
            # The link's text names the namespace as its inode does, at half a stat's
            # cost; it and the poll are read in one compiled call.
            if self.namespace is None or not mount_table_unchanged(self.namespace,
                                                                   self.file.fileno()):
                self._reread(os.readlink(b"/proc/self/ns/mnt"))
            return self.snapshot

    def after_fork_in_child(self) -> None:
        """The lock may have been held by a parent thread, and the ``mountinfo``
        descriptor is shared with the parent, whose polls consume its reports."""
        self.lock = threading.Lock()
        self.namespace = None

    def _reread(self, namespace: bytes) -> None:
        if self.file is not None:
            self.file.close()
        self.namespace = None
        self.file = open("/proc/self/mountinfo")
        # A change from here on makes the next poll report it.
        self.snapshot = _Snapshot.of(_parse_mounts(self.file))
        self.namespace = namespace


_table = _MountTable()
os.register_at_fork(after_in_child=_table.after_fork_in_child)
# Inside a call (per thread, as contexts are): a list holding the table once its first
# lookup checked it; None outside one.
_view: ContextVar[Optional[List[_Snapshot]]] = ContextVar("mount table of this call",
                                                           default=None)
_Parameters = ParamSpec("_Parameters")
_Result = TypeVar("_Result")


def one_mount_view(function: Callable[_Parameters, _Result]) -> Callable[_Parameters, _Result]:
    """Make every mount lookup of a call of ``function`` see one table, checked at the
    first lookup (a call nested in another keeps the outer one's)."""

    @functools.wraps(function)
    def with_one_view(*args: _Parameters.args, **kwargs: _Parameters.kwargs) -> _Result:
        if _view.get() is not None:
            return function(*args, **kwargs)
        token = _view.set([])
        try:
            return function(*args, **kwargs)
        finally:
            _view.reset(token)

    return with_one_view


def _snapshot() -> _Snapshot:
    view = _view.get()
    if view is None:
        return _table.current()
    if not view:
        view.append(_table.current())
    return view[0]


def mount_view() -> object:
    """A token of the mount table this call sees: the same object for as long as the
    table is unchanged, another one once a mount comes or goes (or the namespace
    changes). A check of mounts made under one token holds while it is current."""
    return _snapshot()


def mounts() -> List[Mount]:
    """The mounts of this process's mount namespace, in mount order."""
    return list(_snapshot().mounts)


def _parse_mounts(table):
    found = []
    for line in table:
        # ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        before, _, after = line.rstrip("\n").partition(" - ")
        fields, tail = before.split(" "), after.split(" ")
        major, minor = (int(part) for part in fields[2].split(":"))
        options = {}
        for option in (fields[5] + "," + (tail[2] if len(tail) > 2 else "")).split(","):
            key, _, value = option.partition("=")
            if key:
                options[key] = value
        found.append(Mount(_unescape(fields[4]), tail[0], os.makedev(major, minor), options))
    return found


def _unescape(path):
    # The kernel writes space, tab, newline and backslash in mount points as \ooo.
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), path)


def mount_at(path: str) -> Optional[Mount]:
    """The mount whose mount point is exactly ``path``, or ``None``; of mounts stacked on
    one point the last (the visible one) wins."""
    return _snapshot().by_point.get(path)


def mount_of_device(device: int) -> Optional[Mount]:
    """The mount of the file system a file with ``st_dev == device`` lives on."""
    return _snapshot().by_device.get(device)


def visible_mounts(fstype: str) -> List[Mount]:
    """Mounts of ``fstype``, each mount point once (the visible one)."""
    by_point: Dict[str, Mount] = {}
    for mount in mounts():
        by_point.pop(mount.mount_point, None)
        by_point[mount.mount_point] = mount
    return [mount for mount in by_point.values() if mount.fstype == fstype]


def writable(path: str) -> bool:
    """True when this process may create files in the directory ``path``."""
    return os.access(path, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)


def world_writable(path: str) -> bool:
    """True when every user may create files in ``path`` (mode like 1777)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return mode & 0o003 == 0o003


# -- hugetlb pools --------------------------------------------------------------------


class HugePagePool(NamedTuple):
    """The kernel's pool of one huge page size (``/sys/kernel/mm/hugepages``)."""

    page_size: int
    total: int
    free: int
    reserved: int
    surplus: int
    overcommit: int

    @property
    def available(self) -> int:
        """Pages a new mapping can still get: free ones nobody reserved, plus the
        surplus pages overcommit still allows (those may fail if memory is fragmented)."""
        return max(0, self.free - self.reserved) + max(0, self.overcommit - self.surplus)


def pool_directory(page_size: int) -> str:
    return os.path.join(HUGEPAGES_SYSFS, f"hugepages-{page_size // 1024}kB")


def pools() -> Dict[int, HugePagePool]:
    """Every huge page size the kernel supports, with its pool, by page size."""
    found = {}
    try:
        names = os.listdir(HUGEPAGES_SYSFS)
    except FileNotFoundError:
        return found
    for directory in names:
        match = re.fullmatch(r"hugepages-(\d+)kB", directory)
        if match:
            page_size = int(match.group(1)) * 1024
            found[page_size] = pool(page_size)
    return dict(sorted(found.items()))


def pool(page_size: int) -> HugePagePool:
    """The pool of ``page_size`` pages (all zero when the kernel lacks that size)."""
    directory = pool_directory(page_size)

    def read(name: str) -> int:
        # One read of the descriptor, not a buffered file object: every huge-page create
        # reads five of these, and sysfs hands out an attribute whole.
        try:
            with open_descriptor(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC) as counter:
                return int(os.read(counter.fd, 64))
        except (FileNotFoundError, ValueError):
            return 0

    return HugePagePool(page_size, read("nr_hugepages"), read("free_hugepages"),
                        read("resv_hugepages"), read("surplus_hugepages"),
                        read("nr_overcommit_hugepages"))


def default_huge_page_size() -> Optional[int]:
    """The kernel's default huge page size (``Hugepagesize``), or ``None`` without hugetlb."""
    value = meminfo().get("Hugepagesize")
    return value * 1024 if value else None


def hugetlbfs_page_size(mount_point: str) -> int:
    """The page size of a hugetlbfs mount: its ``statfs`` block size."""
    return os.statvfs(mount_point).f_bsize


def hugetlbfs_room(mount_point: str) -> Optional[int]:
    """Pages a hugetlbfs mounted with ``size=`` still admits; ``None`` when unlimited
    (the kernel reports no blocks at all then)."""
    info = os.statvfs(mount_point)
    return info.f_bavail if info.f_blocks else None


# -- transparent huge pages ---------------------------------------------------------------


def thp_setting(name: str) -> Optional[str]:
    """The chosen value of a ``/sys/kernel/mm/transparent_hugepage`` setting (the word in
    brackets), or ``None`` when the kernel has no transparent huge pages."""
    try:
        with open(os.path.join(THP_SYSFS, name)) as setting:
            text = setting.read()
    except FileNotFoundError:
        return None
    match = re.search(r"\[(\w+)\]", text)
    return match.group(1) if match else text.strip()


def pmd_page_size() -> int:
    """The size of one PMD-mapped page (2 MiB on x86-64): what a transparent huge page is."""
    try:
        with open(os.path.join(THP_SYSFS, "hpage_pmd_size")) as setting:
            return int(setting.read())
    except (FileNotFoundError, ValueError):
        return 2 << 20


# -- memory counters --------------------------------------------------------------------


def meminfo() -> Dict[str, int]:
    """``/proc/meminfo``: values in KiB (``HugePages_*`` lines are page counts)."""
    values = {}
    with open("/proc/meminfo") as lines:
        for line in lines:
            key, _, rest = line.partition(":")
            words = rest.split()
            if words:
                values[key] = int(words[0])
    return values


def settle_counters() -> bool:
    """Fold the kernel's per-CPU memory counters into ``/proc/meminfo`` (root only; the
    kernel folds them by itself about once a second, so others may read a stale sum)."""
    try:
        with open("/proc/sys/vm/stat_refresh", "w") as refresh:
            refresh.write("1")
    except OSError:
        return False
    return True
