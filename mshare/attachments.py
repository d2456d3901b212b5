"""This process's mappings of regions, shared by every ``Region`` object over them.

Attaching a region the process already maps reuses the mapping; the mapping goes when
the last ``Region`` over it closes. Each mapping holds a shared ``flock`` on its
region's range file (the attach mark); after ``fork`` the child takes marks of its own
so that attachers are counted per process.
"""

import fcntl
import os
import threading

from mshare import faults
from mshare._shared import BOOKKEEPING_SIZE, Bookkeeping
from mshare.backends import get_backend
from mshare.registry import RangeClaim, Registry

table_lock = threading.RLock()
_attachments = {}


class Attachment:
    """One mapping of one region in this process."""

    def __init__(self, key, registry_path, entry, mapping, mark_fd, range_file):
        self.key = key
        self.registry_path = registry_path
        self.entry = entry
        self.mapping = mapping
        self.mark_fd = mark_fd
        self.range_file = range_file
        self.users = 0
        self.bookkeeping = None
        if entry.map_length - entry.data_length >= BOOKKEEPING_SIZE:
            self.bookkeeping = Bookkeeping.over_mapping(mapping, entry.data_length, entry.size,
                                                        name=mapping.label)

    def check_lock_released(self):
        """A lock this process holds must stay mapped until it is released."""
        if self.bookkeeping is not None and self.bookkeeping.locks_held:
            raise RuntimeError(f"{self.mapping.label} cannot be closed while this process holds "
                               "its lock; leave the `with region.lock():` block first")

    def detach(self):
        """Unmap (``BufferError`` while views are alive) and drop the attach mark."""
        self.check_lock_released()
        if self.bookkeeping is not None:
            self.bookkeeping.detach()
        self.mapping.unmap()
        faults.point("close:unmapped")
        self.forget()

    def forget(self):
        """Stop tracking this mapping; it is unmapped once no view references it."""
        with table_lock:
            if _attachments.get(self.key) is self:
                del _attachments[self.key]
        if self.mark_fd >= 0:
            os.close(self.mark_fd)
            self.mark_fd = -1
            faults.point("close:unmarked")

    def release_range_if_unlinked(self):
        """Call after ``detach``/``forget``, outside ``table_lock``: it takes the registry
        lock, and attach takes the two in the other order."""
        # After unlink the range stays reserved until the last process lets go of it;
        # the last one out frees it so the address space is not leaked.
        entry = self.entry
        backend = get_backend(entry.backend)
        if backend.exists(entry.location):
            return
        try:
            with Registry(self.registry_path) as registry, registry.locked():
                registry.release_range_if_unused(
                    RangeClaim(entry.addr, entry.end, self.range_file, entry.backend, entry.location)
                )
        except OSError:
            pass  # the registry itself may be gone; gc sweeps what is left


def find(key):
    return _attachments.get(key)


def add(attachment):
    _attachments[attachment.key] = attachment


def _after_fork_in_child():
    global table_lock
    table_lock = threading.RLock()
    for attachment in list(_attachments.values()):
        # The inherited descriptor shares the parent's lock; closing it does not drop
        # the parent's mark, and a fresh open gives the child a mark of its own.
        inherited = attachment.mark_fd
        try:
            fd = os.open(os.path.join(attachment.registry_path, attachment.range_file),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            continue
        attachment.mark_fd = fd
        if inherited >= 0:
            os.close(inherited)


os.register_at_fork(after_in_child=_after_fork_in_child)
