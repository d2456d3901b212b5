# cython: language_level=3, embedsignature=True
"""Shared objects inside a region: a robust lock, the allocator's entry points, named objects.

All of it lives in the region's bookkeeping area (``_layout.h``), a tail of
``BOOKKEEPING_SIZE`` bytes mapped right after the user's bytes, so ``Region.buf`` is never
touched by it; only allocator block headers live in the arena itself.

Two robust, process-shared, error-checking mutexes live there:

* the *user lock*, what ``region.lock()`` takes. When its holder dies, the next taker makes
  it consistent, releases it and raises ``OwnerDiedError``: the data it protected may be
  half-updated and only the program knows how to check it.
* the *internal lock*, taken briefly by every allocator and name-table change. A holder that
  died mid-change is noticed through the ``busy`` word and the next taker repairs silently:
  allocator state is ours to rebuild, so no one needs to be told. The two locks are
  independent, so ``alloc()`` works inside ``with region.lock():``.

Lookups (``find_named``, ``named``) take no lock: each slot is a seqlock, so read-only
attachers, who cannot write the mutexes, still find named objects.
"""

from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset

import errno
import os
import weakref

from mshare._allocator cimport allocate, live_block, rebuild, release, used_block, verify_allocator
from mshare._layout cimport (
    EOWNERDEAD, MS_BOOKKEEPING_SIZE, MS_DTYPE_BYTES, MS_MAGIC, MS_MAX_DIMS, MS_NAME_BYTES,
    MS_NAME_CAPACITY, MS_SLOT_CREATING, MS_SLOT_DELETING, MS_SLOT_EMPTY, MS_SLOT_LIVE,
    MS_VERSION, ms_bookkeeping_t, ms_fence, ms_load, ms_slot_t, ms_store, ms_store32,
    pthread_mutex_consistent, pthread_mutex_unlock,
)
from mshare._mutex cimport init_mutex, lock_error, timeout_seconds, wait_for
from mshare._slots cimport encode_name, fixed_string, holds_name, name_hash, read_slot

from mshare.errors import CorruptBookkeepingError, OwnerDiedError, RegionFullError

BOOKKEEPING_SIZE = MS_BOOKKEEPING_SIZE
NAME_CAPACITY = MS_NAME_CAPACITY
NAME_MAX_BYTES = MS_NAME_BYTES - 1
DTYPE_MAX_BYTES = MS_DTYPE_BYTES - 1
MAX_DIMS = MS_MAX_DIMS
MAX_ALIGN = 1 << 30


cdef class RegionLock:
    """A region's robust process-shared lock, used as a context manager.

    Taking it raises ``TimeoutError`` when ``timeout`` seconds pass, ``OwnerDiedError``
    (the lock is then free again) when its previous holder died holding it, and
    ``RuntimeError`` when this thread already holds it: it is not re-entrant.
    """

    cdef Bookkeeping owner
    cdef double timeout

    def __cinit__(self, Bookkeeping owner not None, timeout=None):
        self.owner = owner
        self.timeout = timeout_seconds(timeout)

    def acquire(self):
        """Take the lock (see the class docstring for the errors); return True."""
        self.owner.acquire_user(self.timeout)
        return True

    def release(self):
        """Release the lock; ``RuntimeError`` if this thread does not hold it."""
        self.owner.release_user()

    def __enter__(self):
        self.owner.acquire_user(self.timeout)
        return self

    def __exit__(self, exc_type, exc, traceback):
        self.owner.release_user()
        return False


cdef class Bookkeeping:
    """The lock, allocator and name table of one region, over raw memory.

    ``Bookkeeping(bookkeeping_addr, arena_addr, arena_size, name=None, keepalive=None)``:
    the bookkeeping area of ``BOOKKEEPING_SIZE`` bytes at ``bookkeeping_addr`` manages the
    arena ``[arena_addr, arena_addr + arena_size)``. The caller keeps both mapped while this
    object is attached and calls ``detach()`` before unmapping; ``keepalive`` (the mapping
    object, say) stays referenced until then. ``name`` only labels errors.
    """

    cdef ms_bookkeeping_t *bk
    cdef readonly uint64_t bookkeeping_addr, arena_addr, arena_size
    cdef readonly object name
    cdef object keepalive
    cdef bint header_checked
    cdef readonly Py_ssize_t locks_held  # user-lock acquisitions by this process
    cdef RegionLock forever
    cdef object __weakref__

    def __cinit__(self, bookkeeping_addr, arena_addr, arena_size, *, name=None, keepalive=None):
        self.keepalive = keepalive
        self.bookkeeping_addr = bookkeeping_addr
        self.arena_addr = arena_addr
        self.arena_size = arena_size
        self.name = name
        if not self.bookkeeping_addr or self.bookkeeping_addr % 64 or self.arena_addr % 16:
            raise ValueError("the bookkeeping area must be 64-byte and the arena 16-byte aligned")
        if (self.arena_addr < self.bookkeeping_addr + BOOKKEEPING_SIZE
                and self.bookkeeping_addr < self.arena_addr + self.arena_size):
            raise ValueError("the bookkeeping area overlaps the arena")
        self.bk = <ms_bookkeeping_t *><uintptr_t>self.bookkeeping_addr
        _instances.add(self)

    cdef ms_bookkeeping_t *attached(self) except NULL:
        cdef ms_bookkeeping_t *bk = self.bk
        if bk == NULL:
            raise ValueError("the region is closed")
        if not self.header_checked:
            if ms_load(&bk.magic) != MS_MAGIC:
                raise CorruptBookkeepingError(
                    "the region's bookkeeping area is not initialized"
                    if bk.magic == 0 else "the region's bookkeeping area holds foreign data",
                    self.name)
            if bk.version != MS_VERSION or bk.layout_size != sizeof(ms_bookkeeping_t):
                raise CorruptBookkeepingError(
                    f"the region's bookkeeping is format {bk.version} of {bk.layout_size} "
                    f"bytes; this mshare reads format {MS_VERSION}", self.name)
            if bk.arena_addr != self.arena_addr or bk.arena_size != self.arena_size:
                raise CorruptBookkeepingError(
                    f"the region's bookkeeping manages 0x{bk.arena_addr:x}+{bk.arena_size}, "
                    f"not 0x{self.arena_addr:x}+{self.arena_size}", self.name)
            self.header_checked = True
        return bk

    def initialize(self):
        """Set up the lock, allocator and name table on zero-filled memory.

        Called once by the region's creator before anyone else can see the region. Calling
        it again on an initialized area only checks it; foreign data is refused."""
        cdef ms_bookkeeping_t *bk = self.bk
        if bk == NULL:
            raise ValueError("the region is closed")
        if ms_load(&bk.magic) == MS_MAGIC or bk.magic != 0:
            self.attached()
            return
        memset(bk, 0, sizeof(ms_bookkeeping_t))
        init_mutex(&bk.user_lock)
        init_mutex(&bk.internal_lock)
        bk.version = MS_VERSION
        bk.layout_size = sizeof(ms_bookkeeping_t)
        bk.arena_addr = self.arena_addr
        bk.arena_size = self.arena_size
        bk.block_key = int.from_bytes(os.urandom(8), "little")
        ms_store(&bk.magic, MS_MAGIC)

    def detach(self):
        """Forget the memory (before the caller unmaps it); later calls raise ValueError.

        Refused with RuntimeError while this process holds the lock: the C library keeps
        a held robust mutex on a per-thread list that the kernel walks at exit."""
        if self.locks_held > 0:
            raise RuntimeError("the region's lock is held by this process; release it first")
        self.bk = NULL
        self.keepalive = None

    # The user lock.

    def lock(self, timeout=None):
        """A ``RegionLock`` context manager on the region's lock."""
        if timeout is None:
            if self.forever is None:
                self.forever = RegionLock(self)
            return self.forever
        return RegionLock(self, timeout)

    cdef int acquire_user(self, double timeout) except -1:
        cdef ms_bookkeeping_t *bk = self.attached()
        cdef int rc = wait_for(&bk.user_lock, timeout)
        if rc == 0:
            self.locks_held += 1
            return 0
        if rc == EOWNERDEAD:
            pthread_mutex_consistent(&bk.user_lock)
            pthread_mutex_unlock(&bk.user_lock)
            raise OwnerDiedError(
                "the previous holder of the region's lock died holding it; the lock is free "
                "again, but the data it protects may be half-updated", self.name)
        raise lock_error(rc, "the region's lock", timeout, self.name)

    cdef int release_user(self) except -1:
        cdef ms_bookkeeping_t *bk = self.attached()
        cdef int rc = pthread_mutex_unlock(&bk.user_lock)
        if rc:
            raise lock_error(rc, "the region's lock", -1, self.name)
        self.locks_held -= 1
        return 0

    # The internal lock: every allocator and name-table change runs between begin and end.

    cdef ms_bookkeeping_t *begin(self) except NULL:
        cdef ms_bookkeeping_t *bk = self.attached()
        cdef int rc = wait_for(&bk.internal_lock, -1)
        if rc == EOWNERDEAD:
            # What the dead holder left half-done is told by the busy word, checked below.
            pthread_mutex_consistent(&bk.internal_lock)
        elif rc:
            raise lock_error(rc, "the region's allocator lock", -1, self.name)
        if bk.busy:
            try:
                self.repair(bk)
            except BaseException:
                pthread_mutex_unlock(&bk.internal_lock)
                raise
        bk.busy = 1
        ms_fence()
        return bk

    cdef void end(self, ms_bookkeeping_t *bk, bint clean) noexcept:
        """Release the internal lock; unless ``clean``, leave ``busy`` set so the next
        holder runs the repair (and reports the damage) again."""
        if clean:
            bk.pending_alloc = 0
            bk.pending_free = 0
            ms_store(&bk.busy, 0)
        pthread_mutex_unlock(&bk.internal_lock)

    cdef int repair(self, ms_bookkeeping_t *bk) except -1:
        """Undo or finish what a holder that died mid-change left behind."""
        cdef ms_slot_t *slot
        cdef unsigned i
        bk.repairs += 1
        rebuild(bk, self.name)
        try:
            if bk.pending_alloc and live_block(bk, bk.pending_alloc):
                release(bk, bk.pending_alloc, False, self.name)  # its caller never saw it
            if bk.pending_free and live_block(bk, bk.pending_free):
                release(bk, bk.pending_free, False, self.name)  # its caller asked for this
            for i in range(MS_NAME_CAPACITY):
                slot = &bk.slots[i]
                if (not slot.seq & 1 and slot.state != MS_SLOT_CREATING
                        and slot.state != MS_SLOT_DELETING):
                    continue
                if slot.state != MS_SLOT_LIVE:
                    if slot.addr and live_block(bk, slot.addr):
                        release(bk, slot.addr, True, self.name)
                    slot.state = MS_SLOT_EMPTY
                    slot.addr = 0
                if slot.seq & 1:
                    ms_store32(&slot.seq, slot.seq + 1)
        except ValueError as error:  # a block's flags contradict the record that led to it
            raise CorruptBookkeepingError(f"cannot repair the allocator: {error}",
                                          self.name) from None
        return 0

    # The allocator.

    def alloc(self, nbytes, align=64):
        """Allocate ``nbytes`` in the arena at a multiple of ``align``; return the address."""
        cdef uint64_t size, alignment, payload
        cdef ms_bookkeeping_t *bk
        size, alignment = check_request(nbytes, align)
        bk = self.begin()
        try:
            payload = allocate(bk, size, alignment, &bk.pending_alloc, False, self.name)
        except CorruptBookkeepingError:
            self.end(bk, False)
            raise
        except BaseException:
            self.end(bk, True)
            raise
        self.end(bk, True)
        return payload

    def free(self, addr):
        """Free an address ``alloc`` returned; ValueError for anything else or a second free."""
        cdef uint64_t payload
        cdef ms_bookkeeping_t *bk
        if not isinstance(addr, int) or isinstance(addr, bool):
            raise TypeError(f"addr must be an int, not {type(addr).__name__}")
        if not 0 < addr < 1 << 64:
            raise ValueError(f"{addr:#x} is not an address this region's alloc() returned")
        payload = addr
        bk = self.begin()
        try:
            bk.pending_free = payload
            release(bk, payload, False, self.name)
        except CorruptBookkeepingError:
            self.end(bk, False)
            raise
        except BaseException:
            self.end(bk, True)
            raise
        self.end(bk, True)

    def verify(self):
        """Check every allocator and name-table invariant; return heap statistics.

        Walks the whole arena: meant for tests and diagnostics, not hot paths."""
        cdef ms_bookkeeping_t *bk = self.begin()
        cdef unsigned i
        try:
            stats = verify_allocator(bk, self.name)
            stats["repairs"] = bk.repairs
            stats["names"] = 0
            for i in range(MS_NAME_CAPACITY):
                if bk.slots[i].state == MS_SLOT_LIVE:
                    stats["names"] += 1
                    if not used_block(bk, bk.slots[i].addr):
                        raise CorruptBookkeepingError(f"name slot {i} has no block", self.name)
                elif bk.slots[i].state != MS_SLOT_EMPTY or bk.slots[i].seq & 1:
                    raise CorruptBookkeepingError(f"name slot {i} was left mid-change", self.name)
            if stats["names"] != stats["named_blocks"]:
                raise CorruptBookkeepingError(
                    f"{stats['named_blocks']} blocks are flagged named, {stats['names']} names "
                    f"are recorded", self.name)
        finally:
            self.end(bk, True)
        return stats

    # Named objects.

    cdef int find_slot(self, ms_bookkeeping_t *bk, bytes name) noexcept:
        """Index of the LIVE slot holding ``name`` (internal lock held), or -1."""
        cdef uint32_t h = name_hash(name)
        cdef unsigned i
        for i in range(MS_NAME_CAPACITY):
            if (bk.slots[i].state == MS_SLOT_LIVE and bk.slots[i].name_hash == h
                    and holds_name(&bk.slots[i], name)):
                return i
        return -1

    def create_named(self, name, nbytes, dtype, shape, align=64):
        """Allocate ``nbytes`` and record it as ``name`` with a dtype string and a shape.

        FileExistsError if the name is taken, RegionFullError if the table or arena is full."""
        cdef bytes key = encode_name(name)
        cdef bytes dtype_key = dtype.encode("ascii")
        cdef tuple dims = tuple(int(n) for n in shape)
        cdef uint64_t size, alignment
        cdef ms_bookkeeping_t *bk
        cdef ms_slot_t *slot = NULL
        cdef unsigned i
        if not 1 <= len(dtype_key) <= DTYPE_MAX_BYTES or b"\0" in dtype_key:
            raise ValueError(f"a dtype string must be 1-{DTYPE_MAX_BYTES} ASCII bytes, not {dtype!r}")
        if len(dims) > MAX_DIMS or any(n < 0 for n in dims):
            raise ValueError(f"a shape must have at most {MAX_DIMS} sizes >= 0, not {shape!r}")
        size, alignment = check_request(nbytes, align)
        bk = self.begin()
        try:
            if self.find_slot(bk, key) >= 0:
                raise FileExistsError(errno.EEXIST, f"an object named {name!r} already exists",
                                      self.name)
            for i in range(MS_NAME_CAPACITY):
                if bk.slots[i].state == MS_SLOT_EMPTY:
                    slot = &bk.slots[i]
                    break
            else:
                raise RegionFullError(f"the region's name table is full ({NAME_CAPACITY} names)",
                                      self.name)
            ms_store32(&slot.seq, slot.seq + 1)
            ms_fence()
            slot.state = MS_SLOT_CREATING
            slot.addr = 0
            slot.nbytes = size
            slot.name_hash = name_hash(key)
            slot.ndim = len(dims)
            memset(slot.name, 0, MS_NAME_BYTES)
            memcpy(slot.name, <char *>key, len(key))
            memset(slot.dtype, 0, MS_DTYPE_BYTES)
            memcpy(slot.dtype, <char *>dtype_key, len(dtype_key))
            for i in range(MS_MAX_DIMS):
                slot.shape[i] = dims[i] if i < len(dims) else 0
            ms_fence()
            try:
                allocate(bk, size, alignment, &slot.addr, True, self.name)
            except BaseException:
                slot.state = MS_SLOT_EMPTY
                slot.addr = 0
                ms_store32(&slot.seq, slot.seq + 1)
                raise
            ms_store32(&slot.state, MS_SLOT_LIVE)
            ms_store32(&slot.seq, slot.seq + 1)
            payload = slot.addr
        except CorruptBookkeepingError:
            self.end(bk, False)
            raise
        except BaseException:
            self.end(bk, True)
            raise
        self.end(bk, True)
        return payload

    def find_named(self, name):
        """``(addr, nbytes, dtype, shape)`` of the object called ``name``, or None.

        Takes no lock, so it works in read-only attachers too."""
        cdef ms_bookkeeping_t *bk = self.attached()
        cdef bytes key = encode_name(name)
        cdef uint32_t h = name_hash(key)
        cdef ms_slot_t copy
        cdef unsigned i
        for i in range(MS_NAME_CAPACITY):
            if bk.slots[i].name_hash != h or not read_slot(&bk.slots[i], &copy):
                continue
            if not holds_name(&copy, key):
                continue
            if (copy.ndim > MS_MAX_DIMS or copy.dtype[MS_DTYPE_BYTES - 1]
                    or copy.addr < self.arena_addr
                    or copy.addr > self.arena_addr + self.arena_size
                    or copy.nbytes > self.arena_addr + self.arena_size - copy.addr):
                raise CorruptBookkeepingError(f"the entry for {name!r} is damaged", self.name)
            return (copy.addr, copy.nbytes,
                    fixed_string(copy.dtype, MS_DTYPE_BYTES).decode("ascii", errors="replace"),
                    tuple(copy.shape[d] for d in range(copy.ndim)))
        return None

    def named(self):
        """The names of all named objects, sorted. Takes no lock."""
        cdef ms_bookkeeping_t *bk = self.attached()
        cdef ms_slot_t copy
        cdef unsigned i
        found = []
        for i in range(MS_NAME_CAPACITY):
            if bk.slots[i].state == MS_SLOT_LIVE and read_slot(&bk.slots[i], &copy):
                found.append(fixed_string(copy.name, MS_NAME_BYTES).decode(errors="replace"))
        return sorted(found)

    def delete_named(self, name):
        """Free the object called ``name`` and forget the name; FileNotFoundError if absent."""
        cdef bytes key = encode_name(name)
        cdef ms_bookkeeping_t *bk = self.begin()
        cdef ms_slot_t *slot
        cdef int index
        try:
            index = self.find_slot(bk, key)
            if index < 0:
                raise FileNotFoundError(errno.ENOENT, f"no object named {name!r}", self.name)
            slot = &bk.slots[index]
            ms_store32(&slot.seq, slot.seq + 1)
            ms_fence()
            ms_store32(&slot.state, MS_SLOT_DELETING)
            damaged = not used_block(bk, slot.addr)
            if not damaged:
                release(bk, slot.addr, True, self.name)
            slot.state = MS_SLOT_EMPTY
            slot.addr = 0
            ms_store32(&slot.seq, slot.seq + 1)
            if damaged:
                raise CorruptBookkeepingError(
                    f"{name!r} pointed at no allocated block; the name was removed and the "
                    f"memory left alone", self.name)
        except CorruptBookkeepingError:
            self.end(bk, False)
            raise
        except BaseException:
            self.end(bk, True)
            raise
        self.end(bk, True)


_instances = weakref.WeakSet()


def _forget_locks_after_fork():
    # A forked child inherits the counts, not the locks: they stay with the parent's threads.
    for bookkeeping in _instances:
        (<Bookkeeping>bookkeeping).locks_held = 0


os.register_at_fork(after_in_child=_forget_locks_after_fork)


cdef tuple check_request(object nbytes, object align):
    if not isinstance(nbytes, int) or isinstance(nbytes, bool):
        raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
    if not isinstance(align, int) or isinstance(align, bool):
        raise TypeError(f"align must be an int, not {type(align).__name__}")
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, not {nbytes}")
    if align < 1 or align > MAX_ALIGN or align & (align - 1):
        raise ValueError(f"align must be a power of two from 1 to {MAX_ALIGN}, not {align}")
    return min(nbytes, 1 << 62), align
