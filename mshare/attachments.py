"""This process's mappings of regions, shared by every ``Region`` object over them.

A mapping is known by what the kernel says about the data object actually opened (its
backend, device and inode), never by an id an entry claims: whoever may write an entry
chooses its id. Attaching a data object this process already maps reuses the mapping.

An ``Attachment`` lives while an open ``Region``, a view of its memory, or its
``Bookkeeping`` (a held lock, a call in flight) refers to it; the table refers to it only
weakly. ``close()`` of the last open ``Region`` unmaps at once; when the last reference
is simply dropped, the mapping and its attach mark go with the object, and no finalizer
takes a lock: the address range of an unlinked region let go that way is released at the
next call into mshare (``release_pending``), or by the next ``create`` or ``gc``.

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

from mshare import faults
from mshare._shared import BOOKKEEPING_SIZE, Bookkeeping
from mshare.backends import get_backend
from mshare.errors import CorruptEntryError
from mshare.registry import RangeClaim, Registry, close_inherited_locks

table_lock = threading.RLock()
_attachments = weakref.WeakValueDictionary()
# (registry path, RangeClaim) of mappings that went without close(); appended by
# finalizers (which must not block), consumed at safe points.
_pending_releases = []


def data_identity(backend_name, data):
    """The table key of the data object open as the ``Descriptor`` ``data``."""
    info = os.fstat(data.fd)
    return backend_name, info.st_dev, info.st_ino


class Attachment:
    """One mapping of one region's data object in this process."""

    def __init__(self, key, registry, name, entry, mapping, mark, range_file):
        self.key = key
        self.registry_identity = registry.identity
        self.registry_path = registry.path
        self.name = name
        self.entry = entry
        self.mapping = mapping
        self.mark = mark
        self.range_file = range_file
        self.handles = weakref.WeakSet()
        self._bookkeeping = None
        claim = RangeClaim(entry.addr, entry.end, range_file, entry.backend, entry.location)
        self._release_when_dropped = weakref.finalize(
            self, _pending_releases.append, (registry.path, claim))
        self._release_when_dropped.atexit = False

    def bookkeeping(self):
        """The region's one ``Bookkeeping`` in this process (``None`` without a bookkeeping
        area). Call with ``table_lock`` held, so that two are never made."""
        entry = self.entry
        if entry.map_length - entry.data_length < BOOKKEEPING_SIZE:
            return None
        found = self._live_bookkeeping()
        if found is None:
            # It keeps this attachment (so the mapping and the mark) alive while in use;
            # the attachment refers back only weakly, so no cycle delays the unmap.
            found = Bookkeeping(entry.addr + entry.data_length, entry.addr, entry.size,
                                name=self.mapping.label, keepalive=self)
            self._bookkeeping = weakref.ref(found)
        return found

    def _live_bookkeeping(self):
        return None if self._bookkeeping is None else self._bookkeeping()

    def check_lock_released(self):
        """Unmapping the lock while this process holds it would leave it held for ever."""
        bookkeeping = self._live_bookkeeping()
        if bookkeeping is not None and bookkeeping.locks_held:
            raise RuntimeError(f"{self.mapping.label} cannot be closed while this process holds "
                               "its lock; leave the `with region.lock():` block first")

    def check_same_region(self, registry, name, entry):
        """Refuse an entry that names this mapping's data object but is not the entry it
        was mapped from: two entries naming one data object."""
        if (registry.identity, name, entry) != (self.registry_identity, self.name, self.entry):
            raise CorruptEntryError(
                f"registry entry {name!r} names the data object this process already maps as "
                f"region {self.name!r} at {self.entry.addr:#x}; refusing to attach it", name)

    def detach(self):
        """Unmap now and drop the attach mark; call with ``table_lock`` held, once no view
        of the memory is alive."""
        self.check_lock_released()
        bookkeeping = self._live_bookkeeping()
        if bookkeeping is not None:
            bookkeeping.detach()
        self.mapping.unmap()
        faults.point("close:unmapped")
        if _attachments.get(self.key) is self:
            del _attachments[self.key]
        self.mark.close()
        self._release_when_dropped.detach()
        faults.point("close:unmarked")

    def release_range_if_unlinked(self):
        """Call after ``detach``, outside ``table_lock``: it takes the registry lock, and
        attach takes the two in the other order."""
        release_range_if_unlinked(self.registry_path, self.claim())

    def claim(self):
        entry = self.entry
        return RangeClaim(entry.addr, entry.end, self.range_file, entry.backend, entry.location)


def release_range_if_unlinked(registry_path, claim, wait=True):
    """After unlink the range stays reserved until the last process lets go of it; the
    last one out frees it so the address space is not leaked. Without ``wait`` nothing
    happens (and False is returned) while the registry lock is taken."""
    if get_backend(claim.backend).exists(claim.location):
        return True
    try:
        with Registry(registry_path) as registry:
            lock = registry.locked() if wait else registry.try_locked()
            if lock is None:
                return False
            with lock:
                registry.release_range_if_unused(claim)
    except OSError:
        pass  # the registry itself may be gone; gc sweeps what is left
    return True


def release_pending():
    """Release ranges of mappings that went without ``close()``, if the registry lock is
    free now; what cannot be done now stays for the next safe point."""
    while _pending_releases:
        pending = _pending_releases[0]
        if not release_range_if_unlinked(*pending, wait=False):
            return
        try:
            _pending_releases.remove(pending)
        except ValueError:
            pass  # another thread took it


def find(key):
    return _attachments.get(key)


def add(attachment):
    _attachments[attachment.key] = attachment


def _before_fork():
    table_lock.acquire()


def _after_fork_in_parent():
    table_lock.release()


def _after_fork_in_child():
    global table_lock
    table_lock = threading.RLock()
    marks = set()
    for attachment in list(_attachments.values()):
        # The inherited descriptor shares the parent's lock; closing it does not drop
        # the parent's mark, and a fresh open gives the child a mark of its own.
        try:
            fd = os.open(os.path.join(attachment.registry_path, attachment.range_file),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            attachment.mark.close()
            continue
        attachment.mark.replace(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            attachment.mark.close()
            continue
        marks.add(fd)
    close_inherited_locks(keep=marks)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
atexit.register(release_pending)
