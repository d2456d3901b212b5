"""The msharefs mirror: a directory with one entry per region.

Layout of ``MSHARE_ROOT`` (default ``/dev/shm/mshare``, mode 1777 like ``/tmp``):

``NAME``
    the entry of region NAME (format in ``mshare.entry``); its owner and mode are the
    region's, so ``ls -l`` reads like ``ls -l /sys/fs/mshare``.
``mshare_info``
    the address alignment in bytes, as msharefs's own ``mshare_info`` states it.
``.lock``
    ``flock``-ed exclusively by every change; an attach takes it shared only to try again
    after racing a change (``operations._attach``); the kernel drops it when its holder
    dies, so a crash never leaves the registry locked.
``.range-START-END``
    one per live address range, readable by everyone, holding ``BACKEND LOCATION``:
    every user's ``create`` sees every region's range, even of regions it may not read.
    Each process that maps the region holds a shared ``flock`` on it, which is how
    attachers are counted and how a range still mapped after ``unlink`` stays reserved.
``.index/UID``
    the address index (``mshare.address_index``): which GiBs each user's range files
    take, so that ``create`` never reads every range file.
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
from contextlib import ExitStack, contextmanager
from typing import Collection, Dict, Iterator, List, NamedTuple, Optional, Set, Tuple

from mshare import addresses, entry as entry_format, faults
from mshare.address_index import AddressIndex
from mshare.backends import BACKENDS, get_backend
from mshare._core import hold_shared_lock, read_whole
from mshare.errors import CorruptEntryError, MshareError, UnsafeRegistryError
from mshare.fileio import unlink_quietly, write_all
from mshare.owned import Descriptor, Undo, create_file, open_descriptor, signals_deferred
from mshare.registry_root import default_root

INFO_FILE = "mshare_info"
RANGE_PREFIX = ".range-"
TEMP_PREFIX = ".tmp-"
PUBLIC_READ = 0o444
RANGE_FILE_LIMIT = 8192
# What ``Registry.release_range`` did with a range file.
RANGE_FREED, RANGE_KEPT, RANGE_NOT_ITS = "freed", "kept", "not its"
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
LOCK_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# What opening a range file answers when there is none, or something else was planted under
# its name (a symbolic link, a socket, a file its maker may not read).
_NOT_A_RANGE_FILE = frozenset((errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.EACCES, errno.EPERM))
_CREATE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC

# Entries parsed, by their bytes: an entry is never rewritten, so the pool-task
# pattern (every task unpickles, so attaches, the same region) parses each one once.
# Entries are immutable; emptied when full rather than tracked for age.
_parsed: Dict[bytes, entry_format.Entry] = {}
_PARSED_KEPT = 256
# Where every registry this process opened lives, as the kernel names it: a forked
# child closes the lock and range-file descriptors it inherited from these.
opened_paths: Set[str] = set()
# (path, (device, inode)) -> registry id, of the registry directories already in
# ``opened_paths`` and whose ``mshare_info`` this process has checked: a directory made
# anew under the same path may reuse the inode, but not both.
_known_directories: Dict[Tuple[str, Tuple[int, int]], str] = {}


def registry_root(*, make: bool = True) -> str:
    """The registry directory in use: ``$MSHARE_ROOT``, else the shared registry or, for a
    user while root has not made that one, a private one (``mshare.registry_root``), made
    here unless ``make`` is false."""
    return os.environ.get("MSHARE_ROOT") or default_root(make=make)


def range_file_name(start: int, end: int) -> str:
    return f"{RANGE_PREFIX}{start:016x}-{end:016x}"


def _parse(name: str, data: bytes) -> entry_format.Entry:
    """Decode and validate entry bytes, of a known backend."""
    try:
        found = entry_format.parse(data, alignment=addresses.ALIGNMENT, arena=addresses.arena())
        get_backend(found.backend)
    except CorruptEntryError as error:
        raise CorruptEntryError(f"registry entry {name!r}: {error.strerror}", name) from None
    except ValueError as error:
        raise CorruptEntryError(f"registry entry {name!r}: {error}", name) from None
    return found


class RangeFileInTheWay(FileExistsError):
    """A range file the address index does not record (planted by another user, or left
    by a release that failed) is where a new region's would go."""


class RangeClaim(NamedTuple):
    """An address range recorded in the registry."""

    start: int
    end: int
    file_name: str
    backend: str
    location: str


class Registry:
    """An open registry directory. Use as a context manager to close its descriptor."""

    path: str
    identity: Tuple[int, int]
    registry_id: str
    index: AddressIndex

    def __init__(self, root: Optional[str] = None) -> None:
        self.path = os.path.abspath(root or registry_root())
        self._directory, info = _open_directory(self.path)
        try:
            self.identity = (info.st_dev, info.st_ino)
            known = (self.path, self.identity)
            registry_id = _known_directories.get(known)
            if registry_id is None:
                opened_paths.add(os.readlink(f"/proc/self/fd/{self.dir_fd}"))
                # Once per directory and process: nothing reads the file, it is there
                # for people, as msharefs's is, and every new process checks it again.
                self._ensure_info_file()
                # Data objects carry this id, so two registries never share one.
                registry_id = hashlib.blake2b(
                    f"{info.st_dev}:{info.st_ino}".encode(), digest_size=4
                ).hexdigest()
                _known_directories[known] = registry_id
            self.registry_id = registry_id
            self.index = AddressIndex(self)
        except BaseException:
            self.close()
            raise

    @classmethod
    def known(cls, path: str, directory: Descriptor, identity: Tuple[int, int]) -> Optional["Registry"]:
        """The registry at ``path`` from its directory ``directory``, opened and checked
        already, when this process has opened it before; else ``None`` (and ``directory``
        untouched): ``Registry(path)`` does the first opening's work."""
        registry_id = _known_directories.get((path, identity))
        if registry_id is None:
            return None
        registry = cls.__new__(cls)
        registry.path, registry._directory, registry.identity = path, directory, identity
        registry.registry_id, registry.index = registry_id, AddressIndex(registry)
        return registry

    @property
    def dir_fd(self) -> int:
        return self._directory.fd

    def close(self) -> None:
        self._directory.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- locking -------------------------------------------------------------------

    @contextmanager
    def locked(self, exclusive: bool = True) -> Iterator[None]:
        """Hold the registry lock: exclusive for changes, shared for an attach that raced one.

        The exclusive lock comes with the address index loaded and pending ranges swept;
        the index is written back before the lock goes. The wait can be interrupted
        (Ctrl-C): the descriptor goes with the exception, and the lock with it."""
        with self._open_lock() as lock:
            fcntl.flock(lock.fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            if not exclusive:
                yield
                return
            with self._index_session():
                yield

    @contextmanager
    def try_locked(self) -> Iterator[bool]:
        """The exclusive lock, as ``locked()`` gives it, if it is free now: yields True,
        or False (holding nothing) when another process has it. Never waits."""
        with self._open_lock() as lock:
            try:
                fcntl.flock(lock.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            with self._index_session():
                yield True

    def _open_lock(self) -> Descriptor:
        """A descriptor of its own on the registry directory, to ``flock``: the lock is the
        directory itself, which the registry has checked, so no user can plant, own or
        swap it the way a lock file in a world-writable directory could be. Each call
        opens the directory anew, so each holder (thread or process) locks on its own."""
        return open_descriptor(".", LOCK_FLAGS, dir_fd=self.dir_fd)

    @contextmanager
    def _index_session(self) -> Iterator[None]:
        """The address index loaded (and pending ranges released) for the duration, then
        saved; nested sessions share the outer one. Call with the exclusive lock held."""
        if self.index.users is not None:
            yield
            return
        try:
            self.index.load()
        except BaseException:
            self.index.close()
            raise
        try:
            self.release_pending_ranges()
            yield
        finally:
            try:
                self.save_index()
            finally:
                self.index.close()

    def save_index(self) -> None:
        """Write the address index now, as the exclusive lock's release does (a call that
        holds Ctrl-C back does it before letting go, so the write needs no deferral of
        its own)."""
        try:
            self.index.save()
        except OSError:
            # What is not saved is only ranges gone or pending (bits are written
            # before their range file is made), and the directory has changed since
            # the index was written, so the next holder of the lock rebuilds it.
            pass

    # -- entries -------------------------------------------------------------------

    def names(self) -> List[str]:
        """Region names present, sorted."""
        return sorted(
            name for name in os.listdir(self.dir_fd)
            if not name.startswith(".") and name != INFO_FILE
        )

    def stat_entry(self, name: str) -> os.stat_result:
        """``lstat`` of an entry; ``FileNotFoundError`` with a clear message if absent."""
        try:
            return os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise self._missing(name) from None

    def refuse_existing(self, name: str) -> None:
        """``FileExistsError`` if an entry (of any kind) is called ``name``."""
        try:
            os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        raise self._exists(name)

    def read_entry(self, name: str, *, writable: bool = False) -> Tuple[entry_format.Entry, os.stat_result]:
        """Open, read and validate an entry; the kernel checks read (and write) permission
        on it exactly as ``open(2)`` does. Returns ``(Entry, stat_result)``."""
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            data, info = read_whole(self.dir_fd, name, flags, entry_format.MAX_ENTRY_BYTES + 1)
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
            if error.errno == errno.EWOULDBLOCK:
                # Opened with O_NONBLOCK, so a file lease (F_SETLEASE, which only the
                # entry's owner can take, and mshare never does) is refused, not waited on.
                raise CorruptEntryError(
                    f"registry entry {name!r} is held under a file lease by a process of "
                    "its owner; mshare does not wait for it", name) from None
            raise
        if data is None:
            raise CorruptEntryError(f"registry entry {name!r} is not a regular file", name)
        return self.parse_entry(name, data), info

    def parse_entry(self, name: str, data: bytes) -> entry_format.Entry:
        """The validated ``Entry`` of an entry's bytes ``data``; ``CorruptEntryError``
        names what is wrong. Parsing is cached by the bytes (the same bytes parse the same
        way); whether the data's location is one this registry's backend would use now is
        checked every time, since mounts come and go."""
        found = _parsed.get(data)
        if found is None:
            found = _parse(name, data)
            if len(_parsed) >= _PARSED_KEPT:
                _parsed.clear()
            _parsed[data] = found
        problem = BACKENDS[found.backend].location_problem(found.location, self.registry_id)
        if problem is not None:
            raise CorruptEntryError(
                f"registry entry {name!r} points at {found.location!r}, {problem}", name
            )
        return found

    def publish(self, name: str, data: bytes, mode: int, region_id: str,
                undo: ExitStack) -> os.stat_result:
        """Make an entry visible atomically with exactly ``mode``; ``FileExistsError``
        if the name is taken. Readers never see a partial entry. Its removal is pushed on
        the ``Undo`` stack ``undo`` in the same step that links it. Returns the entry's
        ``fstat`` as written (its mode, owner and inode are the linked entry's)."""
        temp_name = TEMP_PREFIX + region_id
        with Undo() as temporary:
            with create_file(temporary, temp_name, _CREATE_FLAGS, 0o600,
                             lambda: unlink_quietly(temp_name, self.dir_fd),
                             dir_fd=self.dir_fd) as temp:
                write_all(temp.fd, data)
                os.fchmod(temp.fd, mode)
                written = os.fstat(temp.fd)
            faults.point("create:entry-written")
            try:
                with signals_deferred():
                    os.link(temp_name, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd,
                            follow_symlinks=False)
                    undo.callback(self.remove_entry, name)
            except FileExistsError:
                raise self._exists(name) from None
        return written

    def remove_entry(self, name: str) -> None:
        os.unlink(name, dir_fd=self.dir_fd)

    def read_own_unreadable_entry(self, name: str) -> Tuple[entry_format.Entry, os.stat_result]:
        """Read an entry whose mode denies its own owner reading (mode 0o200, 0o000):
        the owner may always chmod it, and is about to remove it anyway."""
        with open_descriptor(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=self.dir_fd) as path:
            os.chmod(f"/proc/self/fd/{path.fd}", 0o400)
        return self.read_entry(name)

    # -- address ranges ------------------------------------------------------------

    def range_file_names(self) -> List[str]:
        """Names of the range files present (one listing of the directory)."""
        return [name for name in os.listdir(self.dir_fd) if name.startswith(RANGE_PREFIX)]

    def ranges(self) -> List[RangeClaim]:
        """Every address range recorded, including ones whose content is unreadable."""
        return [claim for claim, _owner in self._recorded()]

    def recorded_ranges(self) -> List[Tuple[RangeClaim, int, bool]]:
        """``(RangeClaim, owner uid, whether its data object exists)`` of every range file
        inside the arena: what the address index is rebuilt from."""
        arena_start, arena_end = addresses.arena()
        found: List[Tuple[RangeClaim, int, bool]] = []
        for claim, owner in self._recorded():
            if not (arena_start <= claim.start < claim.end <= arena_end
                    and not (claim.start - arena_start) % addresses.ALIGNMENT):
                continue  # no address the allocator could hand out
            if owner is None:
                try:
                    owner = os.stat(claim.file_name, dir_fd=self.dir_fd, follow_symlinks=False).st_uid
                except FileNotFoundError:
                    continue
            backend = BACKENDS.get(claim.backend)
            exists = backend is None or not claim.location or backend.exists(claim.location)
            found.append((claim, owner, exists))
        return found

    def _recorded(self) -> List[Tuple[RangeClaim, Optional[int]]]:
        found: List[Tuple[RangeClaim, Optional[int]]] = []
        for file_name in self.range_file_names():
            try:
                start_text, end_text = file_name[len(RANGE_PREFIX):].split("-")
                start, end = int(start_text, 16), int(end_text, 16)
            except ValueError:
                continue
            found.append(self._read_range(file_name, start, end))
        return found

    def recorded_range(self, start: int, end: int) -> Tuple[Optional[RangeClaim], Optional[int]]:
        """``(RangeClaim, owner uid)`` of the range file for ``[start, end)``;
        ``(None, None)`` when there is none. Whoever made the file owns it, so the owner
        tells a region's own range from one planted under its address by someone else."""
        file_name = range_file_name(start, end)
        claim, owner = self._read_range(file_name, start, end)
        if owner is None:
            return None, None
        return claim, owner

    def _read_range(self, file_name: str, start: int, end: int) -> Tuple[RangeClaim, Optional[int]]:
        backend, location, owner = "", "", None
        try:
            with open_descriptor(file_name, READ_FLAGS, dir_fd=self.dir_fd) as descriptor:
                info = os.fstat(descriptor.fd)
                if stat.S_ISREG(info.st_mode):
                    owner = info.st_uid
                    backend, _, location = _read_range_file(descriptor.fd).decode().partition(" ")
        except UnicodeDecodeError:
            pass
        except OSError as error:
            # Gone, or planted where no range file can be read. Anything else (no
            # descriptor left, no memory) must not pass for a range that is free.
            if error.errno not in _NOT_A_RANGE_FILE:
                raise
        return RangeClaim(start, end, file_name, backend, location.strip()), owner

    def claim_range(self, start: int, end: int, backend: str, location: str,
                    undo: ExitStack) -> Descriptor:
        """Record ``[start, end)`` as taken by a region's data object, in the address
        index first and then as its range file; undoing either is pushed on the ``Undo``
        stack ``undo`` the instant it exists. Returns the range file's ``Descriptor``
        with this process's attach mark on it: the creator maps the region next, and the
        file it has just made needs no opening again."""
        file_name = range_file_name(start, end)
        owner = os.geteuid()
        self.index.add(start, end, owner)
        bits_added = [True]

        def remove_bits() -> None:
            if bits_added:
                self.index.remove(start, end, owner)

        undo.callback(remove_bits)
        self.index.save()
        faults.point("create:indexed")
        try:
            claim = create_file(undo, file_name, _CREATE_FLAGS, PUBLIC_READ,
                                lambda: unlink_quietly(file_name, self.dir_fd),
                                dir_fd=self.dir_fd)
        except FileExistsError:
            remove_bits()
            bits_added.clear()
            raise RangeFileInTheWay(
                errno.EEXIST, f"the address index of {self.path} lets {file_name!r} be "
                "taken, but that range file exists", file_name) from None
        undo.callback(claim.close)
        faults.point("create:range-opened")
        write_all(claim.fd, f"{backend} {location}\n".encode())
        os.fchmod(claim.fd, PUBLIC_READ)
        try:
            fcntl.flock(claim.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MshareError(
                errno.EAGAIN, f"address range file {file_name!r} was locked exclusively by "
                "another process the instant it was made (find it in /proc/locks)") from None
        return claim

    def hold_range(self, file_name: str) -> Descriptor:
        """Open a range file and take a shared ``flock`` on it: this process maps it.
        Returns its ``Descriptor``; closing it (or dying) drops the mark."""
        try:
            # Never waits: mshare takes this lock exclusively only for an instant, under
            # the registry lock and once the region's data is gone, so an exclusive
            # holder of a live region's range blocks it on purpose.
            mark = hold_shared_lock(self.dir_fd, file_name, READ_FLAGS)
        except BlockingIOError:
            raise MshareError(
                errno.EAGAIN,
                f"address range file {file_name!r} is locked exclusively by another "
                "process, which blocks the region (find it in /proc/locks)",
            ) from None
        except OSError as error:
            if error.errno not in (errno.ELOOP, errno.ENXIO):
                raise
            mark = None
        if mark is None:
            raise CorruptEntryError(f"address range file {file_name!r} is not a regular file")
        return Descriptor.owning(mark)

    def release_range_if_unused(self, claim: RangeClaim) -> bool:
        """Remove a range nobody maps any more, and its bits from the address index (call
        with the registry locked): True once it is gone (or there was none)."""
        return self.release_range(claim) == RANGE_FREED

    def release_range(self, claim: RangeClaim, owner: Optional[int] = None) -> str:
        """Remove the range file of ``claim`` once nobody maps it, then its bits, reading
        the file once (call with the registry locked). ``owner``: the uid the file must
        belong to (``None``: whoever made it). Returns ``RANGE_FREED`` (removed, or there
        was none), ``RANGE_KEPT`` (its data object still exists, some process maps it,
        or it is another user's file the sticky directory keeps from us) or
        ``RANGE_NOT_ITS`` (not a regular file of that owner recording this claim's data
        object: the range was freed and given to another region meanwhile, or it was
        planted; left for its owner or ``gc``)."""
        with self._index_session():
            backend = BACKENDS.get(claim.backend)
            if backend is None or not claim.location or backend.exists(claim.location):
                return RANGE_KEPT
            try:
                descriptor = open_descriptor(claim.file_name, READ_FLAGS, dir_fd=self.dir_fd)
            except FileNotFoundError:
                return RANGE_FREED
            with descriptor:
                info = os.fstat(descriptor.fd)
                recorded = _read_range_file(descriptor.fd).decode(errors="replace")
                if (not stat.S_ISREG(info.st_mode) or owner not in (None, info.st_uid)
                        or recorded.strip() != f"{claim.backend} {claim.location}"):
                    return RANGE_NOT_ITS
                try:
                    fcntl.flock(descriptor.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return RANGE_KEPT
                return self._remove_range_file(claim, info.st_uid)

    def _remove_range_file(self, claim: RangeClaim, owner: int) -> str:
        try:
            os.unlink(claim.file_name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return RANGE_FREED
        except PermissionError:
            return RANGE_KEPT  # another user's, in the sticky directory
        # After the file is gone, never before: the index covers every range file.
        self.index.remove(claim.start, claim.end, owner)
        return RANGE_FREED

    def keep_pending(self, claim: RangeClaim, owner: int) -> None:
        """The range of an unlinked region is still mapped: release it at a later change."""
        self.index.add_pending(claim.start, claim.end, owner)

    def release_pending_ranges(self) -> None:
        """Release the pending ranges nobody maps any more (exclusive lock held)."""
        for owner, start, end in self.index.pending():
            claim, _file_owner = self.recorded_range(start, end)
            if claim is None:
                self.index.remove(start, end, owner)  # gone already
            else:
                self.release_range(claim)

    def attach_count(self, start: int, end: int, marks: Optional[Dict[str, List[str]]] = None) -> int:
        """How many processes hold a mark on the range (``/proc/locks``): locks placed by
        one process count once (a thread may take a new mark while another lets go of an
        old one); locks whose owner this pid namespace cannot see count one each.
        ``marks`` is a ``range_marks()`` reading to reuse, for counting many ranges."""
        try:
            info = os.stat(range_file_name(start, end), dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        if marks is None:
            marks = range_marks()
        owners = marks.get(f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}", ())
        return len(set(owners) - {"0"}) + owners.count("0")

    # -- helpers -------------------------------------------------------------------

    def _ensure_info_file(self) -> None:
        """Make ``mshare_info`` when it is missing. It is there for people, as msharefs's
        is, and nothing reads it: whatever another user planted under its name (a symbolic
        link, a FIFO, a directory, a file nobody may read) is left alone and blocks
        nothing."""
        try:
            os.stat(INFO_FILE, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            self._make_public_file(INFO_FILE, f"{addresses.ALIGNMENT}\n".encode())

    def _make_public_file(self, file_name: str, content: bytes) -> None:
        """Link a complete mode-0444 ``file_name`` into place unless one appeared first."""
        temp_name = f"{TEMP_PREFIX}{file_name.lstrip('.')}-{os.getpid()}-{os.urandom(4).hex()}"
        with Undo() as temporary:
            with create_file(temporary, temp_name, _CREATE_FLAGS, PUBLIC_READ,
                             lambda: unlink_quietly(temp_name, self.dir_fd),
                             dir_fd=self.dir_fd) as temp:
                write_all(temp.fd, content)
                os.fchmod(temp.fd, PUBLIC_READ)
            try:
                os.link(temp_name, file_name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd,
                        follow_symlinks=False)
            except FileExistsError:
                pass

    def _missing(self, name: str) -> FileNotFoundError:
        return FileNotFoundError(errno.ENOENT, f"no region named {name!r} in {self.path}", name)

    def _exists(self, name: str) -> FileExistsError:
        return FileExistsError(errno.EEXIST, f"a region named {name!r} already exists in {self.path}", name)


def _open_directory(path: str) -> Tuple[Descriptor, os.stat_result]:
    """Open the registry directory, creating it mode 1777, and refuse an unsafe one;
    returns its ``Descriptor`` and ``fstat``."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        directory = open_descriptor(path, flags)
    except FileNotFoundError:
        try:
            os.mkdir(path, 0o700)
            # mkdir applies the umask and may drop the sticky bit; set it exactly.
            os.chmod(path, 0o1777)
        except FileExistsError:
            pass
        directory = open_descriptor(path, flags)
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
        info = os.fstat(directory.fd)
        _check_directory(path, info)
    except BaseException:
        directory.close()
        raise
    return directory, info


def _check_directory(path: str, info: os.stat_result) -> None:
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


def _read_range_file(fd: int) -> bytes:
    """A range file's ``BACKEND LOCATION`` line, in one read: it was written by one
    ``write`` of far fewer bytes, and a read cut short only makes the range look taken
    by something else, so it is kept (``gc`` sorts it out)."""
    return os.read(fd, RANGE_FILE_LIMIT)


def range_marks() -> Dict[str, List[str]]:
    """``{"MAJOR:MINOR:INODE": [owner pid, ...]}`` of every ``flock`` in ``/proc/locks``
    (pid ``"0"`` for owners this pid namespace cannot see), read once."""
    marks: Dict[str, List[str]] = {}
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
                continue
            marks.setdefault(fields[5], []).append(fields[4])
    return marks


def close_inherited_locks(keep: Collection[int]) -> None:
    """In a forked child: close every descriptor of a registry directory (its lock) or
    range file (but those in ``keep``). Whatever a parent thread was doing when the fork
    landed, a lock it held, or was about to take, stays with the parent: ``flock``
    belongs to the open file, and only closing the child's copy lets the file go when the
    parent does. The threads that used the other descriptors do not exist in the child."""
    if not opened_paths:
        return
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd in keep:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used
        directory, _, file_name = target.rpartition("/")
        if target in opened_paths or (directory in opened_paths
                                      and file_name.startswith(RANGE_PREFIX)):
            os.close(fd)
