"""POSIX shared memory in ``/dev/shm`` with 4 KiB pages: available everywhere."""

import errno
import os
import re
import shutil
from types import TracebackType
from typing import Dict, Optional, Type

import posix_ipc

from mshare._core import PAGE_SIZE
from mshare.backends.base import Backend, no_space

SHM_DIRECTORY = "/dev/shm"


def reserve(fd: int, length: int, path: str) -> None:
    """Allocate ``length`` bytes now, so a full file system fails here and never as a
    ``SIGBUS`` on first touch.

    Checked first against the free space and the memory the kernel could give: on a
    tmpfs as large as RAM, filling it would wake the OOM killer before ``ENOSPC``."""
    directory = os.path.dirname(path)
    free = shutil.disk_usage(directory).free
    if length > free:
        raise _no_space(path, length, free)
    # Half of the free memory (sysinfo, one system call) is always available; only a
    # larger region needs /proc/meminfo's finer estimate.
    available = None if length <= _free_memory() // 2 else memory_available()
    if available is not None and length > available:
        raise OSError(
            errno.ENOMEM,
            f"{length} bytes is more than the memory available for shared memory "
            f"({available} bytes: MemAvailable + SwapFree); choose a smaller size or free memory",
            path,
        )
    try:
        os.posix_fallocate(fd, 0, length)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise _no_space(path, length, shutil.disk_usage(directory).free) from None


def _no_space(path: str, length: int, free: int) -> OSError:
    directory = os.path.dirname(path)
    return no_space(path, length, free,
                    f"free some space or enlarge it (mount -o remount,size=... {directory})")


def _free_memory() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * PAGE_SIZE


def memory_available() -> Optional[int]:
    """MemAvailable + SwapFree from /proc/meminfo in bytes, or None if unreadable."""
    fields: Dict[str, int] = {}
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                key, _, value = line.partition(":")
                fields[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    if "MemAvailable" not in fields:
        return None
    return fields["MemAvailable"] + fields.get("SwapFree", 0)


class ShmBackend(Backend):
    name = "shm"

    def page_size(self) -> int:
        return PAGE_SIZE

    def location_for(self, registry_id: str, region_id: str) -> str:
        return f"/mshare-{registry_id}-{region_id}"

    def owns_location(self, location: str, registry_id: str) -> bool:
        return re.fullmatch(rf"/mshare-{re.escape(registry_id)}-[0-9a-f]{{16}}", location) is not None

    def path(self, location: str) -> str:
        return SHM_DIRECTORY + location

    # Data objects are made and opened with open(2) on /dev/shm, which is what shm_open
    # does, but with O_NONBLOCK (a FIFO planted under the name would block shm_open) and
    # owned from the instant they exist (see mshare.owned).

    def reserve(self, fd: int, length: int, path: str) -> None:
        reserve(fd, length, path)

    def unlink(self, location: str) -> None:
        try:
            with _translated(self.path(location)):
                posix_ipc.unlink_shared_memory(location)
        except FileNotFoundError:
            pass


class _translated:
    """Turn posix_ipc's own exception classes into the built-in OSError family."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> "_translated":
        return self

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> bool:
        if kind is None or not issubclass(kind, posix_ipc.Error):
            return False
        if isinstance(error, posix_ipc.PermissionsError):
            raise PermissionError(errno.EACCES, "permission denied", self.path) from None
        if isinstance(error, posix_ipc.ExistentialError):
            # "No shared memory exists with ..." versus "... already exists".
            code = errno.EEXIST if "already exists" in str(error).lower() else errno.ENOENT
            raise OSError(code, os.strerror(code), self.path) from None
        raise OSError(errno.EIO, str(error), self.path) from None
