"""The address index: which parts of the arena a registry's ranges take, read in a few
system calls however many regions live, so that ``create`` never looks at every range file.

The range files (``.range-START-END``) stay the truth; the index is a summary of them
kept in the directory ``.index`` of the registry (mode 1777, sticky), one file per user
holding ranges, named by uid and owned by that user (only they, or root, can replace it):

====== ============ ==============================================================
offset bytes        field
====== ============ ==============================================================
0      4            magic ``b"MSIX"``
4      2            format version (1)
6      2            0
8      4            slots S: the arena's size in units of ``ALIGNMENT`` (1 GiB)
12     4            pending count P
16     8            registry directory ``st_mtime_ns`` when this file was written
24     8            registry directory ``st_size`` then
32     8            registry directory ``st_nlink`` then
40     S/8          bitmap: bit i set (byte i // 8, bit i % 8) = the i-th GiB of the
                    arena lies in a range file of this user
40+S/8 16 * P       pending ranges (start, end): unlinked while still mapped
end-4  4            CRC-32 of every byte before it
====== ============ ==============================================================

Crash safety rests on two rules, both under the exclusive registry lock:

- Order: a range's bits are written before its range file exists, and cleared only
  after it is gone. A process killed in between leaves bits
  with no range file (address space unused until the next rebuild), never a range file
  the index does not cover: a range is never handed out twice.
- Freshness: each write records the registry directory's modification time, size and
  link count, which every change of the directory moves. The index is used only while
  one of its files records the directory as it is now; otherwise (a crash after the
  directory changed, range files planted by hand or left by another version) it is
  rebuilt from the range files, as ``mshare gc`` does. The rebuild also marks pending
  every range whose data object is gone.

Pending ranges belong to regions unlinked while some process still mapped them. Each
mutation (create, unlink, the close that lets go of an unlinked region) releases those
nobody maps any more, so a range outlives its last mapping only until the next mutation
— also when the last process left through ``os._exit`` and ran no cleanup.

Anyone may write into ``.index`` (like the registry, it is sticky): a user can lie only
about ranges of their own, and whoever made ``.index`` could delete others' files. Both
are denial of service at worst — every mapping is made with ``MAP_FIXED_NOREPLACE``, so
an address handed out twice fails loudly, never maps over another region.
"""

import errno
import os
import stat
import struct
import zlib
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Set, Tuple

from mshare import addresses
from mshare.errors import UnsafeRegistryError
from mshare.fileio import unlink_quietly
from mshare.owned import Descriptor, open_descriptor, signals_deferred

if TYPE_CHECKING:
    from mshare.registry import Registry

# The registry directory as a file of the index last saw it: mtime_ns, size, link count.
Stamp = Tuple[int, int, int]

INDEX_DIRECTORY = ".index"
MAGIC = b"MSIX"
VERSION = 1
_HEADER = struct.Struct("<4sHHIIqqq")
_PENDING = struct.Struct("<QQ")
_CRC = struct.Struct("<I")
MAX_PENDING = 1 << 16
TEMP_PREFIX = ".tmp-"
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Another user's file under this user's name in the sticky index directory: only they
# (or root) may take it away.
_WHO_REMOVES = "its owner or root must remove it"
_READ_WRITE_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def slot_count() -> int:
    start, end = addresses.arena()
    return (end - start) // addresses.ALIGNMENT


def range_bits(start: int, end: int) -> int:
    """The bitmap bits of the GiBs ``[start, end)`` covers (both aligned, in the arena)."""
    first = (start - addresses.arena()[0]) // addresses.ALIGNMENT
    count = -(-(end - start) // addresses.ALIGNMENT)
    return ((1 << count) - 1) << first


class UserIndex:
    """One user's file: the GiBs their range files take and their pending ranges."""

    __slots__ = ("owner", "bits", "pending", "stamp", "file_uid")
    owner: int
    bits: int
    pending: List[Tuple[int, int]]
    stamp: Optional[Stamp]
    file_uid: Optional[int]

    def __init__(self, owner: int, bits: int = 0, pending: Iterable[Tuple[int, int]] = (),
                 stamp: Optional[Stamp] = None, file_uid: Optional[int] = None) -> None:
        self.owner = owner
        self.bits = bits
        self.pending = list(pending)
        self.stamp = stamp
        self.file_uid = file_uid  # who owns the file now (None: there is none)

    def empty(self) -> bool:
        return not self.bits and not self.pending


class AddressIndex:
    """The index of one open registry, loaded under its exclusive lock.

    ``load()`` reads it (rebuilding it when stale); changes stay in memory and go to disk
    with ``save()``, each user's file replaced whole; ``close()`` ends the session. The
    ``.index`` directory and this user's file stay open from the first time the session
    needs them to its end, so a ``create`` that saves twice opens each once.
    """

    def __init__(self, registry: "Registry") -> None:
        self.registry = registry
        self.users: Optional[Dict[int, UserIndex]] = None  # uid -> UserIndex, while loaded
        self.dirty: Set[int] = set()
        self._directory: Optional[Descriptor] = None
        self._directory_checked = False  # its sticky bit, before this session's first write
        self._listed: List[str] = []  # the directory's names when the session read it
        # uid -> (its file opened for writing, checked to be that user's; the file's length)
        self._writers: Dict[int, Tuple[Descriptor, int]] = {}

    def close(self) -> None:
        """End the session: forget what was loaded, close what it held open."""
        self.users = None
        self._listed = []
        self.close_files()

    def close_files(self) -> None:
        """Close the directory and files held open (they are gone, or the session ends)."""
        for writer, _length in self._writers.values():
            writer.close()
        self._writers = {}
        if self._directory is not None:
            self._directory.close()
            self._directory = None

    # -- reading -----------------------------------------------------------------------

    def load(self) -> None:
        """Read every user's file; rebuild from the range files when none records the
        registry directory as it is now. Call with the exclusive registry lock held."""
        self.dirty = set()
        stamp = self._directory_stamp()
        users, damaged = self._read_files()
        if users is None:
            # No index: right when the registry holds no range file, else made now.
            users = {}
            if not any(self.registry.range_file_names()):
                self.users = users
                return
        elif not damaged and any(index.stamp == stamp for index in users.values()):
            self.users = users
            return
        self.users = users
        self.rebuild()

    def _fresh(self, stamp: Stamp) -> bool:
        """True when a file of the index records the registry directory as ``stamp``
        says it is now."""
        return any(index.stamp == stamp for index in self.users.values())

    def _directory_stamp(self) -> Stamp:
        info = os.fstat(self.registry.dir_fd)
        return info.st_mtime_ns, info.st_size, info.st_nlink

    def _read_files(self) -> Tuple[Optional[Dict[int, UserIndex]], bool]:
        directory = self._open_directory()
        if directory is None:
            return None, False
        users: Dict[int, UserIndex] = {}
        damaged = False
        # Nobody else changes the index while the exclusive lock is held: this listing
        # stays true for the session, but for the files the session itself makes.
        self._listed = os.listdir(directory.fd)
        for file_name in self._listed:
            if file_name.startswith(TEMP_PREFIX):
                # Nobody writes the index without the exclusive lock we hold: a
                # temporary file is what a killed writer left.
                self._remove_quietly(file_name, directory.fd)
                continue
            if not file_name.isdigit():
                continue
            found = self._read_file(file_name, directory.fd)
            if found is None:
                damaged = True  # cut short by a crash, or scribbled on
            else:
                # Whoever owns a file vouches for its bits, whatever its name says.
                known = users.setdefault(found.file_uid, UserIndex(found.file_uid))
                known.bits |= found.bits
                known.pending += found.pending
                if int(file_name) == found.file_uid:
                    known.stamp, known.file_uid = found.stamp, found.file_uid
        return users, damaged

    def _read_file(self, file_name: str, directory_fd: int) -> Optional[UserIndex]:
        slots = slot_count()
        limit = _HEADER.size + slots // 8 + MAX_PENDING * _PENDING.size
        try:
            descriptor, writable = self._open_for_reading(file_name, directory_fd)
        except OSError:
            return None
        kept = False
        try:
            info = os.fstat(descriptor.fd)
            if not stat.S_ISREG(info.st_mode):
                return UserIndex(info.st_uid)  # planted, and vouches for nothing
            # One read of what fstat says is there: a file cut short by a crash (or a short
            # read) fails the checksum, which only makes the index be rebuilt.
            data = os.read(descriptor.fd, min(info.st_size, limit) + 1)
            if writable and info.st_uid == int(file_name):
                self._writers[info.st_uid] = (descriptor, info.st_size)  # for the saves
                kept = True
        except OSError:
            return None
        finally:
            if not kept:
                descriptor.close()
        return parse(data, slots, info.st_uid)

    def _open_for_reading(self, file_name: str, directory_fd: int) -> Tuple[Descriptor, bool]:
        """A user's file, and whether it is open for writing too: this user's own is,
        when they may write it, so that the session's saves need not open it again."""
        if file_name == str(os.geteuid()):
            try:
                return open_descriptor(file_name, _READ_WRITE_FLAGS, dir_fd=directory_fd), True
            except PermissionError:
                pass
        return open_descriptor(file_name, _READ_FLAGS, dir_fd=directory_fd), False

    # -- asking ------------------------------------------------------------------------

    def taken_bits(self) -> int:
        bits = 0
        for index in self.users.values():
            bits |= index.bits
        return bits

    def first_free(self, length: int, also_taken: Iterable[Tuple[int, int]] = ()) -> Optional[int]:
        """Lowest aligned start of ``length`` free bytes, or ``None`` when the arena is
        full; ``also_taken`` are more ``(start, end)`` pairs to avoid."""
        taken = self.taken_bits()
        arena_start, arena_end = addresses.arena()
        for start, end in also_taken:
            start, end = max(start, arena_start), min(end, arena_end)
            if start < end:
                aligned = start - (start - arena_start) % addresses.ALIGNMENT
                taken |= range_bits(aligned, end)
        slots = slot_count()
        needed = -(-length // addresses.ALIGNMENT)
        # Bit i of `run` ends up set when slots i .. i + needed - 1 are all free: each
        # step doubles (at most) the run length the bits vouch for.
        run, have = ~taken & ((1 << slots) - 1), 1
        while have < needed and run:
            step = min(have, needed - have)
            run &= run >> step
            have += step
        if not run:
            return None
        return arena_start + ((run & -run).bit_length() - 1) * addresses.ALIGNMENT

    def overlaps(self, start: int, end: int) -> bool:
        return bool(self.taken_bits() & range_bits(start, end))

    def pending(self) -> List[Tuple[int, int, int]]:
        """``(owner, start, end)`` of every pending range this process may release."""
        user = os.geteuid()
        return [(owner, start, end) for owner, index in self.users.items()
                if user in (0, owner) for start, end in index.pending]

    # -- changing (in memory until save) -------------------------------------------------

    def _user(self, owner: int) -> UserIndex:
        self.dirty.add(owner)
        return self.users.setdefault(owner, UserIndex(owner))

    def add(self, start: int, end: int, owner: int) -> None:
        self._user(owner).bits |= range_bits(start, end)

    def remove(self, start: int, end: int, owner: int) -> None:
        """The range file of ``[start, end)`` owned by ``owner`` is gone."""
        index = self._user(owner)
        index.bits &= ~range_bits(start, end)
        index.pending = [pair for pair in index.pending if pair != (start, end)]

    def add_pending(self, start: int, end: int, owner: int) -> None:
        index = self._user(owner)
        if (start, end) not in index.pending and len(index.pending) < MAX_PENDING:
            index.pending.append((start, end))

    def rebuild(self) -> None:
        """Make the index anew from the range files (call with the exclusive lock held);
        users' files this process may not write get their ranges in its own file."""
        user = os.geteuid()
        previous = self.users or {}
        rebuilt: Dict[int, UserIndex] = {}
        for claim, owner, data_exists in self.registry.recorded_ranges():
            keeper = owner if user in (0, owner) else user
            if keeper != owner and previous.get(owner, UserIndex(owner)).bits & range_bits(
                    claim.start, claim.end) == range_bits(claim.start, claim.end):
                continue  # its owner's own file covers it
            index = rebuilt.setdefault(keeper, UserIndex(keeper))
            index.bits |= range_bits(claim.start, claim.end)
            if not data_exists:
                index.pending.append((claim.start, claim.end))
        for owner, index in previous.items():
            if user not in (0, owner):
                rebuilt.setdefault(owner, index)
            else:
                found = rebuilt.setdefault(owner, UserIndex(owner))
                found.file_uid = index.file_uid
        self.users = rebuilt
        self.dirty = {owner for owner in rebuilt if user in (0, owner)} | {user}

    # -- writing -----------------------------------------------------------------------

    def save(self) -> None:
        """Write every changed user's file (and this user's, which records the directory
        as it is now); once it holds nothing, only this user's file stays, empty."""
        user = os.geteuid()
        stamp = None if self.dirty else self._directory_stamp()
        if stamp is not None and self._fresh(stamp):
            return
        writable = {owner for owner in self.dirty | {user} if user in (0, owner)}
        if all(index.empty() for index in self.users.values()):
            if self._open_directory() is None:
                return  # no index, and no range for one to cover
            # Emptied: this user's file stays, empty, so that the next create finds the
            # index fresh instead of making its directory and file anew.
            self._remove_others(writable, user)
            writable = {user}
        directory, made = self._open_or_make_directory()
        if stamp is None or made:  # making the directory changed the registry's
            stamp = self._directory_stamp()
        for owner in sorted(writable):
            index = self.users.setdefault(owner, UserIndex(owner))
            self._write_file(directory.fd, index, stamp)
        self.dirty = set()

    def _remove_others(self, writable: Set[int], user: int) -> None:
        """With every range gone: remove the other users' files this user may (root: all
        of them, garbage too), so an emptied index holds only this user's own file."""
        names = set(map(str, writable))
        if user == 0:
            names.update(self._listed)
        if user in self._writers:
            names.discard(str(user))  # shown to be this user's when it was read
        for file_name in names:
            self._remove_quietly(file_name, self._directory.fd)
            if file_name.isdigit() and int(file_name) in self._writers:
                self._writers.pop(int(file_name))[0].close()

    def _write_file(self, directory_fd: int, index: UserIndex, stamp: Stamp) -> None:
        """Rewrite one user's file in place. A write cut short (the writer killed, or
        interrupted) fails the checksum, and any unreadable file makes the next
        ``load()`` rebuild the index: a torn file is never taken for the truth."""
        data = pack(index, slot_count(), stamp)
        writer = self._writers.get(index.owner)
        descriptor, length = writer if writer is not None else self._open_writer(directory_fd, index.owner)
        # Until the write is complete the file's length is unknown: truncated next time.
        self._writers[index.owner] = (descriptor, -1)
        with signals_deferred():  # so that Ctrl-C never leaves it half written
            written = 0
            while written < len(data):
                written += os.pwrite(descriptor.fd, data[written:], written)
            if length != len(data):
                os.ftruncate(descriptor.fd, len(data))
        self._writers[index.owner] = (descriptor, len(data))
        index.stamp, index.file_uid = stamp, index.owner

    def _open_writer(self, directory_fd: int, owner: int) -> Tuple[Descriptor, int]:
        """``owner``'s file opened for writing (made if missing) and its length, once it
        is shown to be a regular file of theirs."""
        file_name = str(owner)
        try:
            descriptor = open_descriptor(file_name, _WRITE_FLAGS, dir_fd=directory_fd)
        except FileNotFoundError:
            descriptor = open_descriptor(file_name, _WRITE_FLAGS | os.O_CREAT | os.O_EXCL, 0o644,
                                         dir_fd=directory_fd)
            if owner != os.geteuid():
                os.fchown(descriptor.fd, owner, -1)  # root, keeping it the user's
            os.fchmod(descriptor.fd, 0o644)
        except PermissionError:
            raise self._unsafe(f"{INDEX_DIRECTORY}/{file_name} cannot be written by uid "
                               f"{os.geteuid()}; {_WHO_REMOVES}") from None
        except OSError as error:
            if error.errno not in (errno.EISDIR, errno.ELOOP, errno.ENXIO):
                raise
            raise self._unsafe(f"{INDEX_DIRECTORY}/{file_name} is not a file of uid {owner} "
                               f"(a directory, link or socket); {_WHO_REMOVES}") from None
        info = os.fstat(descriptor.fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != owner:
            descriptor.close()
            raise self._unsafe(f"{INDEX_DIRECTORY}/{file_name} is not a file of uid {owner}; "
                               f"{_WHO_REMOVES}")
        return descriptor, info.st_size

    def _open_directory(self) -> Optional[Descriptor]:
        """The ``.index`` directory, held open for the rest of the session; ``None`` when
        there is none."""
        if self._directory is None:
            try:
                self._directory = open_descriptor(INDEX_DIRECTORY, _DIRECTORY_FLAGS,
                                                  dir_fd=self.registry.dir_fd)
            except FileNotFoundError:
                return None
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise self._unsafe(f"{INDEX_DIRECTORY} is not a directory") from None
                raise
            self._directory_checked = False
        return self._directory

    def _open_or_make_directory(self) -> Tuple[Descriptor, bool]:
        """The ``.index`` directory, and whether this call made it."""
        dir_fd = self.registry.dir_fd
        made = False
        while True:
            directory = self._open_directory()
            if directory is not None:
                break
            made = True
            # Made complete (mode 1777) under another name first, so no one ever finds
            # a directory they may not write.
            temp_name = f"{TEMP_PREFIX}index-{os.getpid()}-{os.urandom(4).hex()}"
            with signals_deferred():
                os.mkdir(temp_name, 0o700, dir_fd=dir_fd)
                try:
                    os.chmod(temp_name, 0o1777, dir_fd=dir_fd)
                    os.rename(temp_name, INDEX_DIRECTORY, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except OSError:
                    os.rmdir(temp_name, dir_fd=dir_fd)
                    if not os.path.isdir(os.path.join(self.registry.path, INDEX_DIRECTORY)):
                        raise
        if not self._directory_checked:
            # Checked before the first write of the session, not at every one.
            info = os.fstat(directory.fd)
            if stat.S_IMODE(info.st_mode) & 0o022 and not info.st_mode & stat.S_ISVTX:
                raise self._unsafe(f"{INDEX_DIRECTORY} is writable by others without the sticky bit")
            self._directory_checked = True
        return directory, made

    def _remove_quietly(self, file_name: str, directory_fd: int) -> None:
        try:
            unlink_quietly(file_name, directory_fd)
        except PermissionError:
            pass  # another user's, in a sticky directory

    def _unsafe(self, problem: str) -> UnsafeRegistryError:
        path = os.path.join(self.registry.path, INDEX_DIRECTORY)
        return UnsafeRegistryError(f"address index of {self.registry.path}: {problem} "
                                   f"(in {path}; mshare gc rebuilds the index)", self.registry.path)


def pack(index: UserIndex, slots: int, stamp: Stamp) -> bytes:
    mtime, size, links = stamp
    bitmap = index.bits.to_bytes(slots // 8, "little")
    pending = b"".join(_PENDING.pack(start, end) for start, end in index.pending)
    header = _HEADER.pack(MAGIC, VERSION, 0, slots, len(index.pending), mtime, size, links)
    body = header + bitmap + pending
    return body + _CRC.pack(zlib.crc32(body))


def parse(data: bytes, slots: int, file_uid: Optional[int]) -> Optional[UserIndex]:
    """The ``UserIndex`` in ``data``, or ``None`` when it is not a well-formed index file
    for an arena of ``slots`` GiB; pending ranges outside the arena are dropped."""
    if len(data) < _HEADER.size:
        return None
    magic, version, _zero, found_slots, pending_count, mtime, size, links = _HEADER.unpack_from(data)
    bitmap_end = _HEADER.size + slots // 8
    if (magic, version, found_slots) != (MAGIC, VERSION, slots) or pending_count > MAX_PENDING:
        return None
    body_length = bitmap_end + pending_count * _PENDING.size
    if len(data) != body_length + _CRC.size:
        return None
    if _CRC.unpack_from(data, body_length)[0] != zlib.crc32(data[:body_length]):
        return None
    arena_start, arena_end = addresses.arena()
    pending = [pair for pair in _PENDING.iter_unpack(data[bitmap_end:body_length])
               if arena_start <= pair[0] < pair[1] <= arena_end
               and not (pair[0] - arena_start) % addresses.ALIGNMENT]
    return UserIndex(file_uid, int.from_bytes(data[_HEADER.size:bitmap_end], "little"),
                     pending, (mtime, size, links), file_uid)
