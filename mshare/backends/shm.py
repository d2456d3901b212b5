"""POSIX shared memory in ``/dev/shm`` with 4 KiB pages: available everywhere."""

import errno
import os
import re
import shutil

import posix_ipc

from mshare._core import PAGE_SIZE
from mshare.backends.base import Backend

SHM_DIRECTORY = "/dev/shm"


def reserve(fd, length, path):
    """Allocate ``length`` bytes now, so a full file system fails here and never as a
    ``SIGBUS`` on first touch."""
    directory = os.path.dirname(path)
    # tmpfs refuses up front only a request beyond its whole size; a smaller one that
    # does not fit is allocated page by page until ENOSPC, and where tmpfs may grow as
    # large as RAM the OOM killer strikes first. So what cannot fit is refused unseen.
    if length > shutil.disk_usage(directory).free:
        raise _no_space(directory, length, path)
    try:
        os.posix_fallocate(fd, 0, length)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise _no_space(directory, length, path) from None


def _no_space(directory, length, path):
    free = shutil.disk_usage(directory).free
    return OSError(
        errno.ENOSPC,
        f"not enough space in {directory} for {length} bytes ({free} bytes free); "
        f"free some space or enlarge it (mount -o remount,size=... {directory})",
        path,
    )


class ShmBackend(Backend):
    name = "shm"

    def page_size(self):
        return PAGE_SIZE

    def location_for(self, registry_id, region_id):
        return f"/mshare-{registry_id}-{region_id}"

    def owns_location(self, location, registry_id):
        return re.fullmatch(rf"/mshare-{re.escape(registry_id)}-[0-9a-f]{{16}}", location) is not None

    def path(self, location):
        return SHM_DIRECTORY + location

    def create(self, location, length, mode):
        path = self.path(location)
        with _translated(path):
            memory = posix_ipc.SharedMemory(location, posix_ipc.O_CREX, mode=mode)
        try:
            fd = os.dup(memory.fd)
        except BaseException:
            # Out of descriptors (EMFILE) right after shm_open: undo both.
            memory.close_fd()
            self.unlink(location)
            raise
        memory.close_fd()
        try:
            # shm_open applies the umask; the registry promises the mode exactly.
            os.fchmod(fd, mode)
            os.ftruncate(fd, length)
            reserve(fd, length, path)
        except BaseException:
            os.close(fd)
            self.unlink(location)
            raise
        return fd

    def open(self, location, writable):
        # shm_open is exactly this open(2) but without O_NONBLOCK, and a FIFO planted
        # under the name would block it forever.
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        return os.open(self.path(location), flags)

    def unlink(self, location):
        try:
            with _translated(self.path(location)):
                posix_ipc.unlink_shared_memory(location)
        except FileNotFoundError:
            pass


class _translated:
    """Turn posix_ipc's own exception classes into the built-in OSError family."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None or not issubclass(kind, posix_ipc.Error):
            return False
        if isinstance(error, posix_ipc.PermissionsError):
            raise PermissionError(errno.EACCES, "permission denied", self.path) from None
        if isinstance(error, posix_ipc.ExistentialError):
            # "No shared memory exists with ..." versus "... already exists".
            code = errno.EEXIST if "already exists" in str(error).lower() else errno.ENOENT
            raise OSError(code, os.strerror(code), self.path) from None
        raise OSError(errno.EIO, str(error), self.path) from None
