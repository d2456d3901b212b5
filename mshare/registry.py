"""The msharefs mirror: a directory with one entry per region.

Layout of ``MSHARE_ROOT`` (default ``/dev/shm/mshare``, mode 1777 like ``/tmp``):

``NAME``
    the entry of region NAME (format in ``mshare.entry``); its owner and mode are the
    region's, so ``ls -l`` reads like ``ls -l /sys/fs/mshare``.
``mshare_info``
    the address alignment in bytes, as msharefs's own ``mshare_info`` states it.
``.lock``
    ``flock``-ed exclusively by every change, shared by every attach; the kernel drops
    it when its holder dies, so a crash never leaves the registry locked.
``.range-START-END``
    one per live address range, readable by everyone, holding ``BACKEND LOCATION``:
    every user's ``create`` sees every region's range, even of regions it may not read.
    Each process that maps the region holds a shared ``flock`` on it, which is how
    attachers are counted and how a range still mapped after ``unlink`` stays reserved.
``.tmp-ID``
    an entry being written; it becomes visible only through an atomic ``link``.

Every name is resolved relative to the directory's descriptor with ``O_NOFOLLOW``;
symbolic links are never followed.
"""

import errno
import fcntl
import hashlib
import os
import stat
from contextlib import contextmanager
from typing import NamedTuple

from mshare import addresses, entry as entry_format, faults
from mshare.backends import BACKENDS, get_backend
from mshare.errors import CorruptEntryError, MshareError, UnsafeRegistryError

DEFAULT_ROOT = "/dev/shm/mshare"
INFO_FILE = "mshare_info"
LOCK_FILE = ".lock"
RANGE_PREFIX = ".range-"
TEMP_PREFIX = ".tmp-"
PUBLIC_READ = 0o444


def registry_root():
    """The registry directory in use: ``$MSHARE_ROOT`` or ``/dev/shm/mshare``."""
    return os.environ.get("MSHARE_ROOT") or DEFAULT_ROOT


def range_file_name(start, end):
    return f"{RANGE_PREFIX}{start:016x}-{end:016x}"


class RangeClaim(NamedTuple):
    """An address range recorded in the registry."""

    start: int
    end: int
    file_name: str
    backend: str
    location: str


class Registry:
    """An open registry directory. Use as a context manager to close its descriptor."""

    def __init__(self, root=None):
        self.path = os.path.abspath(root or registry_root())
        self.dir_fd = _open_directory(self.path)
        try:
            info = os.fstat(self.dir_fd)
            # Data objects carry this id, so two registries never share one.
            self.registry_id = hashlib.blake2b(
                f"{info.st_dev}:{info.st_ino}".encode(), digest_size=4
            ).hexdigest()
            self.identity = (info.st_dev, info.st_ino)
            self._ensure_info_file()
        except BaseException:
            os.close(self.dir_fd)
            raise

    def close(self):
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- locking -------------------------------------------------------------------

    @contextmanager
    def locked(self, exclusive=True):
        """Hold the registry lock: exclusive for changes, shared for attaching."""
        fd = self._open_public_file(LOCK_FILE, b"")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # -- entries -------------------------------------------------------------------

    def names(self):
        """Region names present, sorted."""
        return sorted(
            name for name in os.listdir(self.dir_fd)
            if not name.startswith(".") and name != INFO_FILE
        )

    def stat_entry(self, name):
        """``lstat`` of an entry; ``FileNotFoundError`` with a clear message if absent."""
        try:
            return os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise self._missing(name) from None

    def refuse_existing(self, name):
        """``FileExistsError`` if an entry (of any kind) is called ``name``."""
        try:
            os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        raise self._exists(name)

    def read_entry(self, name, *, writable=False):
        """Open, read and validate an entry; the kernel checks read (and write) permission
        on it exactly as ``open(2)`` does. Returns ``(Entry, stat_result)``."""
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=self.dir_fd)
        except FileNotFoundError:
            raise self._missing(name) from None
        except PermissionError:
            info = self.stat_entry(name)
            wanted = "read and write" if writable else "read"
            raise PermissionError(
                errno.EACCES,
                f"permission denied: region {name!r} (owner uid {info.st_uid}, gid "
                f"{info.st_gid}, mode {stat.S_IMODE(info.st_mode):04o}) does not let you {wanted}",
                name,
            ) from None
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise CorruptEntryError(
                    f"registry entry {name!r} is not a regular file "
                    "(mshare never follows links in the registry)", name
                ) from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise CorruptEntryError(f"registry entry {name!r} is not a regular file", name)
            data = _read_at_most(fd, entry_format.MAX_ENTRY_BYTES + 1)
        finally:
            os.close(fd)
        return self.parse_entry(name, data), info

    def parse_entry(self, name, data):
        try:
            found = entry_format.parse(
                data, alignment=addresses.ALIGNMENT, arena=addresses.arena()
            )
            backend = get_backend(found.backend)
        except CorruptEntryError as error:
            raise CorruptEntryError(f"registry entry {name!r}: {error.strerror}", name) from None
        except ValueError as error:
            raise CorruptEntryError(f"registry entry {name!r}: {error}", name) from None
        problem = backend.location_problem(found.location, self.registry_id)
        if problem is not None:
            raise CorruptEntryError(
                f"registry entry {name!r} points at {found.location!r}, {problem}", name
            )
        return found

    def publish(self, name, data, mode, region_id):
        """Make an entry visible atomically with exactly ``mode``; ``FileExistsError``
        if the name is taken. Readers never see a partial entry."""
        temp_name = TEMP_PREFIX + region_id
        fd = os.open(
            temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600, dir_fd=self.dir_fd,
        )
        try:
            try:
                _write_all(fd, data)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            faults.point("create:entry-written")
            try:
                os.link(temp_name, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd,
                        follow_symlinks=False)
            except FileExistsError:
                raise self._exists(name) from None
        finally:
            _unlink_quietly(temp_name, self.dir_fd)

    def remove_entry(self, name):
        os.unlink(name, dir_fd=self.dir_fd)

    def read_own_unreadable_entry(self, name):
        """Read an entry whose mode denies its own owner reading (mode 0o200, 0o000):
        the owner may always chmod it, and is about to remove it anyway."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{fd}", 0o400)
        finally:
            os.close(fd)
        return self.read_entry(name)

    # -- address ranges ------------------------------------------------------------

    def ranges(self):
        """Every address range recorded, including ones whose content is unreadable."""
        claims = []
        for file_name in os.listdir(self.dir_fd):
            if not file_name.startswith(RANGE_PREFIX):
                continue
            try:
                start_text, end_text = file_name[len(RANGE_PREFIX):].split("-")
                start, end = int(start_text, 16), int(end_text, 16)
            except ValueError:
                continue
            claims.append(self._read_range(file_name, start, end)[0])
        return claims

    def recorded_range(self, start, end):
        """``(RangeClaim, owner uid)`` of the range file for ``[start, end)``;
        ``(None, None)`` when there is none. Whoever made the file owns it, so the owner
        tells a region's own range from one planted under its address by someone else."""
        file_name = range_file_name(start, end)
        claim, owner = self._read_range(file_name, start, end)
        if owner is None:
            return None, None
        return claim, owner

    def _read_range(self, file_name, start, end):
        backend, location, owner = "", "", None
        try:
            fd = os.open(file_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self.dir_fd)
            try:
                info = os.fstat(fd)
                if stat.S_ISREG(info.st_mode):
                    owner = info.st_uid
                    backend, _, location = _read_at_most(fd, 8192).decode().partition(" ")
            finally:
                os.close(fd)
        except (OSError, UnicodeDecodeError):
            pass
        return RangeClaim(start, end, file_name, backend, location.strip()), owner

    def claim_range(self, start, end, backend, location):
        """Record ``[start, end)`` as taken by a region's data object."""
        file_name = range_file_name(start, end)
        fd = os.open(
            file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            PUBLIC_READ, dir_fd=self.dir_fd,
        )
        try:
            faults.point("create:range-opened")
            _write_all(fd, f"{backend} {location}\n".encode())
            os.fchmod(fd, PUBLIC_READ)
        except BaseException:
            os.close(fd)
            _unlink_quietly(file_name, self.dir_fd)
            raise
        os.close(fd)
        return file_name

    def hold_range(self, file_name):
        """Open a range file and take a shared ``flock`` on it: this process maps it.
        Returns the descriptor; closing it (or dying) drops the mark."""
        try:
            fd = os.open(file_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self.dir_fd)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENXIO):
                raise CorruptEntryError(
                    f"address range file {file_name!r} is not a regular file") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CorruptEntryError(f"address range file {file_name!r} is not a regular file")
            try:
                # Never wait: mshare takes this lock exclusively only for an instant and
                # under the registry lock, which the caller holds, so an exclusive holder
                # now is someone blocking the region on purpose.
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MshareError(
                    errno.EAGAIN,
                    f"address range file {file_name!r} is locked exclusively by another "
                    "process, which blocks the region (find it in /proc/locks)",
                ) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def range_in_use(self, claim):
        """True while the range's data object exists or any process maps it.

        A range file that now records another data object (the range was freed and
        given to a new region meanwhile) counts as in use: it is not this claim's."""
        backend = BACKENDS.get(claim.backend)
        if backend is None or not claim.location or backend.exists(claim.location):
            return True
        try:
            fd = os.open(claim.file_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self.dir_fd)
        except FileNotFoundError:
            return False
        try:
            recorded = _read_at_most(fd, 8192).decode(errors="replace").partition(" ")[2].strip()
            if recorded != claim.location:
                return True
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def release_range_if_unused(self, claim):
        """Remove a range nobody maps any more (call with the registry locked); ranges of
        other users that the sticky directory will not let us remove stay until their
        owner (or ``gc``) does."""
        if self.range_in_use(claim):
            return False
        try:
            os.unlink(claim.file_name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return True
        except PermissionError:
            return False
        return True

    def attach_count(self, start, end):
        """How many open files hold a mark on the range (``/proc/locks``)."""
        try:
            info = os.stat(range_file_name(start, end), dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        key = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        count = 0
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
                    continue
                if fields[5] == key:
                    count += 1
        return count

    # -- helpers -------------------------------------------------------------------

    def _ensure_info_file(self):
        self._open_public_file(INFO_FILE, f"{addresses.ALIGNMENT}\n".encode(), keep=False)

    def _open_public_file(self, file_name, content, keep=True):
        """Open (creating once, atomically, mode 0444) a registry file everyone reads.

        ``O_CREAT`` is never used on an existing file, so ``fs.protected_regular`` does
        not refuse files another user created."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        while True:
            try:
                fd = os.open(file_name, flags, dir_fd=self.dir_fd)
                break
            except FileNotFoundError:
                pass
            except OSError as error:
                if error.errno == errno.ELOOP:
                    raise UnsafeRegistryError(
                        f"{os.path.join(self.path, file_name)} is a symbolic link; remove it",
                        self.path,
                    ) from None
                raise
            temp_name = f"{TEMP_PREFIX}{file_name.lstrip('.')}-{os.getpid()}-{os.urandom(4).hex()}"
            temp = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                           PUBLIC_READ, dir_fd=self.dir_fd)
            try:
                _write_all(temp, content)
                os.fchmod(temp, PUBLIC_READ)
                os.close(temp)
                os.link(temp_name, file_name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd,
                        follow_symlinks=False)
            except FileExistsError:
                pass
            finally:
                _unlink_quietly(temp_name, self.dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeRegistryError(
                f"{os.path.join(self.path, file_name)} is not a regular file; remove it", self.path
            )
        if not keep:
            os.close(fd)
            return -1
        return fd

    def _missing(self, name):
        return FileNotFoundError(errno.ENOENT, f"no region named {name!r} in {self.path}", name)

    def _exists(self, name):
        return FileExistsError(errno.EEXIST, f"a region named {name!r} already exists in {self.path}", name)


def _open_directory(path):
    """Open the registry directory, creating it mode 1777, and refuse an unsafe one."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        try:
            os.mkdir(path, 0o700)
            # mkdir applies the umask and may drop the sticky bit; set it exactly.
            os.chmod(path, 0o1777)
        except FileExistsError:
            pass
        fd = os.open(path, flags)
    except OSError as error:
        # O_DIRECTORY | O_NOFOLLOW on a symbolic link answers ENOTDIR or ELOOP.
        if error.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise UnsafeRegistryError(
                f"registry {path} is a symbolic link; mshare refuses it. "
                "Point MSHARE_ROOT at the real directory.", path
            ) from None
        if error.errno == errno.ENOTDIR:
            raise UnsafeRegistryError(f"registry {path} is not a directory", path) from None
        raise
    try:
        _check_directory(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_directory(path, info):
    user = os.geteuid()
    if info.st_uid not in (0, user):
        raise UnsafeRegistryError(
            f"registry {path} is owned by uid {info.st_uid}, who could delete anyone's "
            "entries; use a directory owned by root or by you (as root: "
            f"install -d -m 1777 -o root {path}), or set MSHARE_ROOT", path
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022 and not mode & stat.S_ISVTX:
        raise UnsafeRegistryError(
            f"registry {path} (mode {mode:04o}) is writable by others without the sticky "
            f"bit, so anyone could delete or replace entries; fix it with: chmod +t {path}",
            path,
        )


def _read_at_most(fd, limit):
    chunks, total = [], 0
    while total < limit:
        chunk = os.read(fd, limit - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink_quietly(file_name, dir_fd):
    try:
        os.unlink(file_name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
