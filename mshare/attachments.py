"""This process's mappings of regions, shared by every ``Region`` object over them.

A mapping is known by what the kernel says about the data object actually opened (its
backend, device and inode), never by an id an entry claims: whoever may write an entry
chooses its id. Attaching a data object this process already maps reuses the mapping.

An ``Attachment`` lives while an open ``Region``, a view of its memory, or its
``Bookkeeping`` (a held lock, a call in flight) refers to it; the table refers to it only
weakly. ``close()`` of the last open ``Region`` unmaps at once; when the last reference
is simply dropped, the mapping and its attach mark go with the object. No finalizer takes
a lock: the table's weak reference calls back into C only (``list.append``), and the
address range of an unlinked region let go that way is released at the next call into
mshare (``release_pending``), or by the next ``create`` or ``gc``.

Each mapping holds a shared ``flock`` on its region's range file (the attach mark). Fork
never lands inside ``table_lock``; the child takes marks of its own and closes every
registry lock it inherited, so attachers are counted per process and no child holds a
lock a parent thread took.
"""

import atexit
import fcntl
import os
import threading
import weakref
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from mshare import faults
from mshare._core import Mapping
from mshare._shared import BOOKKEEPING_SIZE, Bookkeeping
from mshare.backends import get_backend
from mshare.errors import CorruptEntryError
from mshare.entry import Entry
from mshare.owned import Descriptor
from mshare.registry import RangeClaim, Registry, close_inherited_locks

if TYPE_CHECKING:
    from mshare.region import Region

table_lock: threading.RLock = threading.RLock()
# Held by create from the address picked to the mapping entered in the table, and taken by
# fork(): a child never inherits a mapping (or an address probe) that its table does not
# know and that no attach mark of its own keeps reserved.
fork_gate: threading.RLock = threading.RLock()

# What a mapping is known by: its backend, and the device and inode of its data object.
DataIdentity = Tuple[str, int, int]
# The entry file a mapping was reached through: its device and inode.
EntryFile = Tuple[int, int]


class _Watch(weakref.ref):
    """The table's weak reference to an attachment, with what releasing its address range
    takes once the attachment has gone."""

    __slots__ = ("key", "registry_path", "entry", "range_file", "entry_file")

    def __new__(cls, attachment: "Attachment", callback: Callable[["_Watch"], object]) -> "_Watch":
        return super().__new__(cls, attachment, callback)

    def __init__(self, attachment: "Attachment", callback: Callable[["_Watch"], object]) -> None:
        super().__init__(attachment, callback)
        self.key = attachment.key
        self.registry_path = attachment.registry_path
        self.entry = attachment.entry
        self.range_file = attachment.range_file
        self.entry_file: Optional[EntryFile] = None

    def claim(self) -> RangeClaim:
        return _claim(self.entry, self.range_file)


_table: Dict[DataIdentity, _Watch] = {}  # data identity -> _Watch
# The same watches by entry file: an attach of a region mapped here finds the mapping
# from the entry it read, without opening the data object again.
_by_entry: Dict[EntryFile, _Watch] = {}
# Watches of attachments that went without close(), appended by the weakref machinery
# itself; consumed at safe points (`release_pending`), looked at first to skip the call.
dropped: List[_Watch] = []


def data_identity(backend_name: str, data_stat: os.stat_result) -> DataIdentity:
    """The table key of the data object whose ``fstat`` is ``data_stat``."""
    return backend_name, data_stat.st_dev, data_stat.st_ino


class Attachment:
    """One mapping of one region's data object in this process."""

    # Slots are released in the order of their sorted names, so `mapping` (the munmap)
    # goes before `mark` (whose close runs Python code, where another thread may run):
    # no thread ever finds the table empty while the address is still mapped.
    __slots__ = ("_bookkeeping", "_watch", "detached", "entry", "entry_owner", "handles", "key",
                 "mapping", "mark", "name", "range_file", "registry_identity", "registry_path",
                 "__weakref__")
    key: DataIdentity
    registry_identity: Tuple[int, int]
    registry_path: str
    name: str
    entry: Entry
    mapping: Mapping
    mark: Descriptor
    range_file: str
    handles: List["weakref.ref[Region]"]
    detached: bool
    entry_owner: Optional[Tuple[int, int, int]]

    def __init__(self, key: DataIdentity, registry: Registry, name: str, entry: Entry,
                 mapping: Mapping, mark: Descriptor, range_file: str) -> None:
        self.key = key
        self.registry_identity = registry.identity
        self.registry_path = registry.path
        self.name = name
        self.entry = entry
        self.mapping = mapping
        self.mark = mark
        self.range_file = range_file
        # Weak references without callbacks: dropping a Region runs no Python code.
        self.handles = []
        self._bookkeeping: Optional["weakref.ref[Bookkeeping]"] = None
        self._watch: Optional[_Watch] = None
        self.detached = False
        # Owner, group and mode of the entry file it is indexed by (``add_handle``).
        self.entry_owner = None

    def add_handle(self, region: "Region", entry_stat: os.stat_result) -> None:
        """Track ``region``, made from the entry whose ``stat`` is ``entry_stat``; the first
        one indexes this attachment by that entry file. Call with ``table_lock`` held, as
        the next two."""
        watch = self._watch
        if watch is not None and watch.entry_file is None:
            watch.entry_file = (entry_stat.st_dev, entry_stat.st_ino)
            self.entry_owner = (entry_stat.st_uid, entry_stat.st_gid, entry_stat.st_mode)
            _by_entry[watch.entry_file] = watch
        if len(self.handles) >= 8:  # dropped handles leave dead references: sweep them
            self.handles = [weakref.ref(other) for other in self.open_handles()]
        self.handles.append(weakref.ref(region))

    def open_handles(self) -> List["Region"]:
        """The ``Region``s over this mapping that are open and alive."""
        return [region for region in (handle() for handle in self.handles) if region is not None]

    def remove_handle(self, region: "Region") -> None:
        self.handles = [handle for handle in self.handles if handle() not in (region, None)]

    def bookkeeping(self) -> Optional[Bookkeeping]:
        """The region's one ``Bookkeeping`` in this process (``None`` without a bookkeeping
        area). Call with ``table_lock`` held, so that two are never made."""
        entry = self.entry
        if entry.map_length - entry.data_length < BOOKKEEPING_SIZE:
            return None
        found = self._live_bookkeeping()
        if found is None:
            # It keeps this attachment (so the mapping and the mark) alive while in use;
            # the attachment refers back only weakly, so no cycle delays the unmap.
            found = Bookkeeping.over_mapping(self.mapping, entry.data_length, entry.size,
                                             name=self.mapping.label, keepalive=self)
            self._bookkeeping = weakref.ref(found)
        return found

    def _live_bookkeeping(self) -> Optional[Bookkeeping]:
        return None if self._bookkeeping is None else self._bookkeeping()

    def check_lock_released(self) -> None:
        """Unmapping the lock while this process holds it would leave it held for ever."""
        bookkeeping = self._live_bookkeeping()
        if bookkeeping is not None and bookkeeping.locks_held:
            raise RuntimeError(f"{self.mapping.label} cannot be closed while this process holds "
                               "its lock; leave the `with region.lock():` block first")

    def check_same_region(self, registry: Registry, name: str, entry: Entry) -> None:
        """Refuse an entry that names this mapping's data object but is not the entry it
        was mapped from: two entries naming one data object."""
        if (registry.identity, name, entry) != (self.registry_identity, self.name, self.entry):
            raise CorruptEntryError(
                f"registry entry {name!r} names the data object this process already maps as "
                f"region {self.name!r} at {self.entry.addr:#x}; refusing to attach it", name)

    def detach(self) -> None:
        """Unmap now and drop the attach mark; call with ``table_lock`` held, once no view
        of the memory is alive."""
        self.check_lock_released()
        # First, so that no attach ever shares a mapping half torn down (an interrupt
        # may stop this anywhere).
        self.detached = True
        bookkeeping = self._live_bookkeeping()
        if bookkeeping is not None:
            bookkeeping.detach()
        self.mapping.unmap()
        faults.point("close:unmapped")
        _forget(self._watch)
        self.mark.close()
        faults.point("close:unmarked")
        # Queued now rather than left to the caller, so an interrupt before the caller
        # releases the range only delays it to the next safe point.
        dropped.append(self._watch)
        self._watch = None  # then it dies before the attachment and never calls back

    def claim(self) -> RangeClaim:
        return _claim(self.entry, self.range_file)


def _claim(entry: Entry, range_file: str) -> RangeClaim:
    return RangeClaim(entry.addr, entry.end, range_file, entry.backend, entry.location)


def _release_range_if_unlinked(registry_path: str, claim: RangeClaim) -> bool:
    """After unlink the range stays reserved until the last process lets go of it; the
    last one out frees it so the address space is not leaked. Never waits: False (and
    nothing done) while the registry lock is taken."""
    if get_backend(claim.backend).exists(claim.location):
        return True
    try:
        with Registry(registry_path) as registry, registry.try_locked() as locked:
            if not locked:
                return False
            registry.release_range_if_unused(claim)
    except OSError:
        pass  # the registry itself may be gone; gc sweeps what is left
    return True


def release_pending() -> None:
    """Release ranges of mappings that went without ``close()``, if the registry lock is
    free now; what cannot be done now stays for the next safe point."""
    while dropped:
        watch = dropped[0]
        _forget(watch)
        if not _release_range_if_unlinked(watch.registry_path, watch.claim()):
            return
        try:
            dropped.remove(watch)
        except ValueError:
            pass  # another thread took it


def find(key: DataIdentity) -> Optional["Attachment"]:
    """The live attachment of the data object ``key``, or ``None``."""
    watch = _table.get(key)
    attachment = None if watch is None else watch()
    return None if attachment is None or attachment.detached else attachment


def find_by_entry(registry: Registry, name: str, entry: Entry,
                  entry_stat: os.stat_result) -> Optional["Attachment"]:
    """The live attachment mapped from this very entry file, or ``None``: the same inode
    with the same owner, group and mode (so the data check made when it was mapped still
    holds), the same bytes, reached by the same name in the same registry."""
    watch = _by_entry.get((entry_stat.st_dev, entry_stat.st_ino))
    attachment = None if watch is None else watch()
    if (attachment is None or attachment.detached
            or attachment.entry_owner != (entry_stat.st_uid, entry_stat.st_gid, entry_stat.st_mode)
            or (registry.identity, name, entry)
            != (attachment.registry_identity, attachment.name, attachment.entry)):
        return None
    return attachment


def _forget(watch: Optional[_Watch]) -> None:
    """Take ``watch`` out of the table, by data object and by entry file."""
    if watch is None:
        return
    if _table.get(watch.key) is watch:
        del _table[watch.key]
    if watch.entry_file is not None and _by_entry.get(watch.entry_file) is watch:
        del _by_entry[watch.entry_file]


def add(attachment: "Attachment") -> None:
    """Track ``attachment``; call with ``table_lock`` held."""
    attachment._watch = _Watch(attachment, dropped.append)
    _table[attachment.key] = attachment._watch


def live() -> List["Attachment"]:
    """Every attachment alive in this process."""
    return [attachment for attachment in map(find, list(_table)) if attachment is not None]


def _before_fork() -> None:
    fork_gate.acquire()
    table_lock.acquire()


def _after_fork_in_parent() -> None:
    table_lock.release()
    fork_gate.release()


def _after_fork_in_child() -> None:
    global table_lock, fork_gate
    table_lock = threading.RLock()
    fork_gate = threading.RLock()
    marks = set()
    for attachment in live():
        # The inherited descriptor shares the parent's lock; closing it does not drop
        # the parent's mark, and a fresh open gives the child a mark of its own, taken
        # before the inherited one goes so that the range is never unmarked meanwhile.
        try:
            fd = os.open(os.path.join(attachment.registry_path, attachment.range_file),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            attachment.mark.close()
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            attachment.mark.close()
            continue
        attachment.mark.replace(fd)
        marks.add(fd)
    close_inherited_locks(keep=marks)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
def _release_at_exit() -> None:
    """The process is ending: besides what is pending, give back the ranges of unlinked
    regions that views still keep mapped (they cannot outlive the process), so that an
    array alive at interpreter exit leaves no range file behind."""
    release_pending()
    for attachment in live():
        claim = attachment.claim()
        if get_backend(claim.backend).exists(claim.location):
            continue
        attachment.mark.close()  # this process's attach mark, which keeps the range in use
        _release_range_if_unlinked(attachment.registry_path, claim)


atexit.register(_release_at_exit)
