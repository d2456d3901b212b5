"""hugetlbfs: regions in the kernel's pool of huge pages, with shared page tables.

A region's data object is a file on a hugetlbfs mount the user can write (found in
``/proc/self/mountinfo``; ``MSHARE_HUGETLBFS`` names the one to use). Regions start on
1 GiB boundaries, so every whole GiB of a 2 MiB-page mapping is a PMD table's worth of
the same file at the same address in every process, which Linux then shares between
them (``huge_pmd_share``): page tables cost nothing per extra process there.
"""

import errno
import os
from typing import Callable, Optional, Tuple, Union

from mshare import hugetlb_cgroup, machine
from mshare._core import Mapping
from mshare.addresses import round_up
from mshare.backends.files import FileBackend, Unavailable
from mshare.errors import HugePagesUnavailableError
from mshare.owned import Descriptor
from mshare.units import format_exact_size, format_size

ENVIRONMENT = "MSHARE_HUGETLBFS"


class HugetlbBackend(FileBackend):
    name = "hugetlb"
    fstype = machine.HUGETLBFS

    def page_size(self) -> int:
        if self._page_size is None:
            return machine.default_huge_page_size() or 2 << 20
        return self._page_size

    def reserve(self, fd: int, length: int, location: str) -> None:
        """Nothing to do before the mapping, as a rule: a ``MAP_SHARED`` mapping of a
        hugetlbfs file reserves every page it covers (``hugetlb_reserve_pages``, charged
        to the file's inode until it is truncated or removed), so ``map_new`` fails on a
        short pool and no touch of the region can ever find the pool empty (``SIGBUS``).
        The pages are taken from the reservation, zeroed, when first touched, so a create
        costs no clearing of memory nobody uses yet. Under a hugetlb cgroup limit, though,
        a touch past the limit is a ``SIGBUS``: there every page is allocated now, charged
        to this process, where going over the limit is an error at ``create``."""
        if not hugetlb_cgroup.fault_limited(self.page_size()):
            return
        try:
            os.posix_fallocate(fd, 0, length)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.ENOMEM):
                raise
            raise self._short_of_pages(length, "allocating") from None

    def map_new(self, data: Descriptor, start: int, length: int, label: str) -> Mapping:
        try:
            return super().map_new(data, start, length, label)
        except OSError as error:
            if error.errno not in (errno.ENOMEM, errno.ENOSPC):
                raise
            page_size = self.page_size()
            pages, room = length // page_size, _room(os.fstatvfs(data.fd))
            if pages <= machine.pool(page_size).available and (room is None or pages <= room):
                raise  # not the pool: the address-space limit (RLIMIT_AS), say
            raise self._short_of_pages(length, "reserving") from None

    def _short_of_pages(self, length: int, doing: str) -> HugePagesUnavailableError:
        """The error of a region whose ``length`` bytes of pages could not be had."""
        page_size = self.page_size()
        pages, pool = length // page_size, machine.pool(page_size)
        limit = (" or this process's hugetlb cgroup limit"
                 if hugetlb_cgroup.fault_limited(page_size) else "")
        return HugePagesUnavailableError(
            errno.ENOMEM,
            f"the hugetlb pool ran short while {doing} {pages} {format_size(page_size)} pages "
            f"({pool.available} are free now; another process took them, or the mount's size= "
            f"limit{limit} is reached); as root: {grow_pool_advice(pool, pages)}",
        )


def plan(size: int, tail_length: Callable[[int], int], auto: bool) -> Union["HugetlbBackend", Unavailable]:
    """A hugetlb backend bound to the mount that can hold ``size`` bytes followed by
    ``tail_length(page_size)`` bytes of bookkeeping, or ``Unavailable`` saying why not.

    The smallest page size that fits wins: 2 MiB pages round a region up the least and
    are the ones whose page tables processes share; 1 GiB pages (no PMD tables at all)
    are used when only their mount and pool can hold the region. With ``auto`` a mount
    whose pages are larger than the region is skipped.
    """
    override = os.environ.get(ENVIRONMENT)
    if override:
        mount = machine.mount_at(os.path.normpath(os.path.abspath(override)))
        if mount is None or mount.fstype != machine.HUGETLBFS:
            return Unavailable(
                errno.ENODEV, f"{ENVIRONMENT}={override} is not a hugetlbfs mount point",
                f"mshare mount (it mounts one there), or unset {ENVIRONMENT}", True,
            )
        candidates = [mount]
    else:
        candidates = machine.visible_mounts(machine.HUGETLBFS)
        if not candidates:
            return Unavailable(errno.ENODEV, "no hugetlbfs is mounted",
                               mount_advice(size, tail_length), False)
    usable = [mount for mount in candidates if machine.writable(mount.mount_point)]
    if not usable:
        shown = ", ".join(mount.mount_point for mount in candidates)
        return Unavailable(
            errno.EACCES, f"hugetlbfs is mounted at {shown}, but you may not create files there",
            f"{mount_advice(size, tail_length)} (mshare mount mounts one every user may write)",
            bool(override),
        )
    problems = []
    by_page_size = sorted(((*page_size_and_room(mount.mount_point), mount.mount_point)
                           for mount in usable), key=lambda found: (found[0], found[2]))
    for page_size, room, mount_point in by_page_size:
        if auto and size < page_size:
            problems.append(Unavailable(
                errno.EINVAL, f"the region is smaller than one {format_size(page_size)} huge page",
                "", False,
            ))
            continue
        pages = pages_for(size, tail_length, page_size)
        pool = machine.pool(page_size)
        if pages <= pool.available and (room is None or pages <= room):
            return HugetlbBackend(mount_point, page_size)
        if pages > pool.available:
            problems.append(Unavailable(
                errno.ENOMEM,
                f"the hugetlb pool has {pool.available} free {format_size(page_size)} pages, "
                f"the region needs {pages}",
                grow_pool_advice(pool, pages),
                bool(override) or pool.total > 0 or pool.overcommit > 0,
            ))
        else:
            problems.append(Unavailable(
                errno.ENOSPC,
                f"hugetlbfs at {mount_point} was mounted with a size= limit that admits "
                f"{room} more {format_size(page_size)} pages, the region needs {pages}",
                _remount_advice(mount_point, pages), True,
            ))
    # The most telling reason: a pool or mount that is set up but short beats "too small".
    return max(problems, key=lambda problem: problem.configured)


def page_size_and_room(mount_point: str) -> Tuple[int, Optional[int]]:
    """A hugetlbfs mount's page size (its ``statfs`` block size) and the pages its
    ``size=`` limit still admits, from one ``statfs``."""
    info = os.statvfs(mount_point)
    return info.f_bsize, _room(info)


def _room(info: os.statvfs_result) -> Optional[int]:
    """Pages a hugetlbfs still admits (reserved ones count as taken); ``None`` when it
    has no ``size=`` limit: the kernel reports no blocks at all then."""
    return info.f_bavail if info.f_blocks else None


def _remount_advice(mount_point: str, pages: int) -> str:
    """The command that raises a hugetlbfs ``size=`` limit enough for ``pages`` more."""
    info = os.statvfs(mount_point)
    used = info.f_blocks - info.f_bavail
    return f"mount -o remount,size={format_exact_size((used + pages) * info.f_bsize)} {mount_point}"


def grow_pool_advice(pool: machine.HugePagePool, pages: int) -> str:
    """The command that makes ``pages`` pages of the pool's size free."""
    deficit = max(pages - pool.available, 1)
    size_option = "" if pool.page_size == machine.default_huge_page_size() else (
        f" --page-size {format_size(pool.page_size)}")
    return (f"mshare mount{size_option} --hugepages {format_exact_size(pages * pool.page_size)} "
            f"(or: echo {pool.total + deficit} > {machine.pool_directory(pool.page_size)}/nr_hugepages)")


def pages_for(size: int, tail_length: Callable[[int], int], page_size: int) -> int:
    """Huge pages a region of ``size`` bytes and its bookkeeping tail take."""
    return (round_up(size, page_size) + tail_length(page_size)) // page_size


def mount_advice(size: int, tail_length: Callable[[int], int]) -> str:
    """The command that sets up hugetlbfs and a pool for a region of ``size`` bytes."""
    page_size = machine.default_huge_page_size() or 2 << 20
    pages = pages_for(size, tail_length, page_size)
    return (f"mshare mount --hugepages {format_exact_size(pages * page_size)} (or: mkdir -p /dev/hugepages; "
            f"mount -t hugetlbfs -o mode=1777 none /dev/hugepages; sysctl vm.nr_hugepages={pages})")
