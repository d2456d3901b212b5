"""Huge-page tmpfs: regions in files on a tmpfs mounted with ``huge=within_size`` (or
``always``/``advise``), mapped with ``MADV_HUGEPAGE``.

Transparent huge pages need no pool: the kernel assembles 2 MiB pages from free memory.
Page tables shrink 512-fold (one PMD entry instead of a table of 512 PTEs per 2 MiB), but
stay per process. ``/dev/shm`` is usually mounted ``huge=never``, so this backend needs a
tmpfs of its own (``mshare mount`` makes one; ``MSHARE_THP_ROOT`` names the one to use).
"""

import errno
import os
from functools import lru_cache
from typing import Callable, Optional, Union

from mshare import machine
from mshare._core import Mapping
from mshare.addresses import round_up
from mshare.backends.base import no_space
from mshare.backends.files import FileBackend, Unavailable
from mshare.backends.shm import SHM_DIRECTORY
from mshare.units import format_exact_size, format_size

ENVIRONMENT = "MSHARE_THP_ROOT"
SHMEM_ENABLED = os.path.join(machine.THP_SYSFS, "shmem_enabled")
MOUNT_ADVICE = ("mshare mount (or: mkdir -p /run/mshare/thp; mount -t tmpfs "
                "-o mode=1777,huge=within_size none /run/mshare/thp)")


class ThpBackend(FileBackend):
    name = "thp"
    fstype = machine.TMPFS

    def page_size(self) -> int:
        if self._page_size is None:
            return pmd_page_size()
        return self._page_size

    def reserve(self, fd: int, length: int, location: str) -> None:
        directory = os.path.dirname(location)
        # tmpfs allocates a request that does not fit page by page until ENOSPC, and where
        # it may grow as large as memory the OOM killer strikes first: refuse it unseen.
        free = _free_bytes(directory)
        if length > free:
            raise no_space(location, length, free, f"as root: {_enlarge_advice(directory, length)}")
        try:
            os.posix_fallocate(fd, 0, length)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            raise no_space(location, length, _free_bytes(directory),
                           f"as root: {_enlarge_advice(directory, length)}") from None

    def suits(self, mount: machine.Mount) -> bool:
        return thp_place(mount)

    def after_map(self, mapping: Mapping) -> None:
        # Needed where the mount says huge=advise; harmless under within_size and always.
        mapping.advise_hugepages()


def thp_place(mount: machine.Mount) -> bool:
    """True when thp data objects may live on ``mount``: a tmpfs, but never /dev/shm,
    which is the shm backend's (a file there is never taken for a thp region's)."""
    return mount.fstype == machine.TMPFS and mount.mount_point != SHM_DIRECTORY


def huge_mount(mount: machine.Mount, shmem_enabled: Optional[str]) -> bool:
    """True when files on ``mount`` get transparent huge pages and it may hold thp regions."""
    if not thp_place(mount):
        return False
    return mount.huge_policy in machine.HUGE_TMPFS_POLICIES or shmem_enabled == "force"


def plan(size: int, tail_length: Callable[[int], int], auto: bool) -> Union["ThpBackend", Unavailable]:
    """A thp backend bound to a huge-page tmpfs with room for ``size`` bytes followed by
    ``tail_length(page_size)`` bytes of bookkeeping, or ``Unavailable`` saying why not."""
    shmem_enabled = machine.thp_setting("shmem_enabled")
    if shmem_enabled is None:
        return Unavailable(errno.ENODEV, "this kernel has no transparent huge pages", "", False)
    if shmem_enabled == "deny":
        return Unavailable(
            errno.ENODEV,
            "transparent huge pages for shared memory are switched off (shmem_enabled is deny)",
            f"echo advise > {SHMEM_ENABLED}", False,
        )
    override = os.environ.get(ENVIRONMENT)
    if override:
        mount = machine.mount_at(os.path.normpath(os.path.abspath(override)))
        if mount is None or not huge_mount(mount, shmem_enabled):
            kind = ("is not a tmpfs mount point" if mount is None or mount.fstype != machine.TMPFS
                    else f"is a tmpfs mounted huge={mount.huge_policy}")
            return Unavailable(
                errno.ENODEV, f"{ENVIRONMENT}={override} {kind}",
                f"mshare mount (it mounts a huge-page tmpfs there), or unset {ENVIRONMENT}", True,
            )
        candidates = [mount]
    else:
        # Mounts that ask for huge pages come before those only "force" makes huge.
        candidates = sorted(
            (mount for mount in machine.visible_mounts(machine.TMPFS)
             if huge_mount(mount, shmem_enabled)),
            key=lambda mount: mount.huge_policy not in machine.HUGE_TMPFS_POLICIES,
        )
    usable = [mount for mount in candidates if machine.writable(mount.mount_point)]
    if not usable:
        return Unavailable(
            errno.ENODEV,
            "no tmpfs mounted with huge=within_size (or always, advise) that you may write",
            MOUNT_ADVICE, bool(override),
        )
    page_size = pmd_page_size()
    if auto and size < page_size:
        return Unavailable(
            errno.EINVAL, f"the region is smaller than one {format_size(page_size)} huge page",
            "", False,
        )
    length = round_up(size, page_size) + tail_length(page_size)
    for mount in usable:
        if length <= _free_bytes(mount.mount_point):
            return ThpBackend(mount.mount_point, page_size)
    roomiest = max(usable, key=lambda mount: _free_bytes(mount.mount_point)).mount_point
    return Unavailable(
        errno.ENOSPC,
        f"the huge-page tmpfs at {roomiest} has {_free_bytes(roomiest)} bytes free, the region "
        f"needs {length}",
        _enlarge_advice(roomiest, length), True,
    )


@lru_cache(maxsize=None)
def pmd_page_size() -> int:
    """The size of a transparent huge page, which the hardware fixes: read once per
    process rather than at every create (a buffered read of a sysfs file, ten system calls)."""
    return machine.pmd_page_size()


def _free_bytes(directory: str) -> int:
    info = os.statvfs(directory)
    return info.f_bavail * info.f_frsize


def _enlarge_advice(directory: str, length: int) -> str:
    info = os.statvfs(directory)
    used = (info.f_blocks - info.f_bavail) * info.f_frsize
    return f"mount -o remount,size={format_exact_size(round_up(used + length, 1 << 20))} {directory}"
