# cython: language_level=3, embedsignature=True
"""Shared objects inside a region: a lock, the allocator's entry points, named objects.

All of it lives in the region's bookkeeping area (``_layout.h``), a tail of
``BOOKKEEPING_SIZE`` bytes mapped right after the user's bytes, so ``Region.buf`` is never
touched by it; only allocator block headers live in the arena itself.

Two futex locks (``_mutex``, ``_futex.h``) live there:

* the *user lock*, what ``region.lock()`` takes. When its holder dies, the next waiter
  clears it and raises ``OwnerDiedError``: the data it protected may be half-updated and
  only the program knows how to check it.
* the *internal lock*, taken briefly by every allocator and name-table change. A holder that
  died mid-change is noticed through the ``busy`` word and the next taker repairs silently:
  allocator state is ours to rebuild, so no one needs to be told. Its wait is bounded, so a
  process that stops holding it, or a writer that scribbles on it, gives ``TimeoutError``.
  The two locks are independent, so ``alloc()`` works inside ``with region.lock():``.

Lookups (``find_named``, ``named``) take no lock: each slot is a seqlock, so read-only
attachers, who cannot write the locks, still find named objects.

Within the process, every call that touches the memory counts itself in flight, and
``detach()`` waits until none is (waking lock waiters first), so the mapping never goes
from under a thread.
"""

cimport cython
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.limits cimport INT_MAX
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset
from posix.unistd cimport usleep

import errno
import os
import weakref

from mshare._allocator cimport (
    Arena, allocate, live_block, rebuild, release, used_block, verify_allocator,
)
from mshare._layout cimport (
    MS_BOOKKEEPING_SIZE, MS_DTYPE_BYTES, MS_HEADER, MS_INTERNAL_LOCK_OFFSET, MS_MAGIC, MS_MAX_DIMS, MS_MIN_BLOCK,
    MS_NAME_BYTES, MS_NAME_CAPACITY, MS_SLOT_CREATING, MS_SLOT_DELETING, MS_SLOT_EMPTY,
    MS_SLOT_LIVE, MS_USER_LOCK_OFFSET, MS_VERSION, ms_bookkeeping_t, ms_fence, ms_load, ms_peek, ms_peek32,
    ms_slot_t, ms_store, ms_store32,
)
from mshare._mutex cimport (
    MS_LOCK_CLOSED, MS_LOCK_DEADLOCK, MS_LOCK_OWNER_DIED, MS_LOCK_TAKEN, MS_LOCK_TIMED_OUT,
    MS_LOCK_WAITERS,
    monotonic, ms_futex_wake, ms_holder_alive, ms_lock_peek, ms_lock_release, ms_lock_spin,
    ms_lock_swap, ms_self_word,
    self_word, timeout_seconds, wait_for,
)
from mshare._slots cimport encode_name, fixed_string, holds_name, name_hash, read_slot

from mshare._core import Mapping
from mshare.errors import CorruptBookkeepingError, OwnerDiedError, RegionFullError

BOOKKEEPING_SIZE = MS_BOOKKEEPING_SIZE
NAME_CAPACITY = MS_NAME_CAPACITY
NAME_MAX_BYTES = MS_NAME_BYTES - 1
DTYPE_MAX_BYTES = MS_DTYPE_BYTES - 1
MAX_DIMS = MS_MAX_DIMS
MAX_ALIGN = 1 << 30
# Where the lock words sit in the bookkeeping area, and the bit a waiter sets in them.
USER_LOCK_OFFSET = MS_USER_LOCK_OFFSET
INTERNAL_LOCK_OFFSET = MS_INTERNAL_LOCK_OFFSET
LOCK_WAITERS = MS_LOCK_WAITERS

# Legitimate holders keep the allocator lock for microseconds; a wait this long (seconds)
# means a stopped holder or a writer scribbling on the lock word.
INTERNAL_LOCK_TIMEOUT = 5.0

# Only Bookkeeping.over_mapping() may construct, so no address ever comes from a caller.
cdef object _CONSTRUCT = object()


cdef extern from "Python.h":
    ctypedef struct PyMethodDef:
        const char *ml_name
        void *ml_meth
        int ml_flags
        const char *ml_doc
    object PyCFunction_NewEx(PyMethodDef *definition, object bound_to, object module)
    int METH_NOARGS
    int METH_FASTCALL


# `with lock:` looks `__enter__` and `__exit__` up on every use, and a method found on the
# type is bound anew each time: two objects made and freed per `with`, which cost more than
# the lock itself. So RegionLock's two methods are descriptors, and the lock that
# `region.lock()` hands out again and again keeps its bound functions, made once
# (`keep_bound_methods`). They are bound to a `_BoundTo`, never to the lock: a lock holding
# functions bound to itself would be a cycle, which would keep the mapping alive until the
# collector ran.

@cython.final
cdef class _BoundTo:
    """What a lock's kept functions are bound to: its owner (strongly: the mapping stays
    while a `with` block runs) and the lock (weakly: the lock clears it as it goes)."""
    cdef Bookkeeping owner
    cdef double timeout
    cdef PyObject *lock


cdef int _take_lock(Bookkeeping owner, double timeout) except -1:
    # The fast path inline: one compare-and-swap to take a free lock, no allocation.
    # Anything else (a closed or unchecked region, a held lock, an unknown thread
    # identity) goes through acquire_user's checks and wait.
    cdef ms_bookkeeping_t *bk = owner.arena.bk
    cdef uint64_t me = ms_self_word()
    cdef uint64_t observed = 0
    if (bk != NULL and owner.header_checked and not owner.closing and me != 0
            and ms_lock_swap(&bk.user_lock, &observed, me)):
        owner.hold(me)
    else:
        owner.acquire_user(timeout)
    return 0


cdef object _give_lock_back(Bookkeeping owner, object exc_type):
    cdef uint64_t me = ms_self_word()
    if me != 0 and owner.held_by == me:
        ms_lock_release(&owner.arena.bk.user_lock)
        owner.drop_hold()
    elif exc_type is None:
        owner.release_user()  # raises: this thread does not hold it
    # Otherwise a condition's wait interrupted while re-taking the lock ended the block
    # without it, and the error that says why must reach the caller, not "not held".
    return False


cdef object _enter_bound(_BoundTo bound, PyObject *unused):
    cdef RegionLock lock
    _take_lock(bound.owner, bound.timeout)
    if bound.lock != NULL:
        return <object>bound.lock
    # `with mshare.attach(name).lock():` dropped the region, and with it this lock, before
    # entering; the lock is taken all the same (`bound` keeps the mapping), and `as` gets
    # an equal lock.
    lock = RegionLock.__new__(RegionLock, bound.owner)
    lock.timeout = bound.timeout
    return lock


cdef object _exit_bound(_BoundTo bound, PyObject **args, Py_ssize_t count):
    if count != 3:
        raise TypeError(f"__exit__ takes 3 arguments ({count} given)")
    return _give_lock_back(bound.owner, <object>args[0])


cdef object _enter_lock(RegionLock lock, PyObject *unused):
    _take_lock(lock.owner, lock.timeout)
    return lock


cdef object _exit_lock(RegionLock lock, PyObject **args, Py_ssize_t count):
    if count != 3:
        raise TypeError(f"__exit__ takes 3 arguments ({count} given)")
    return _give_lock_back(lock.owner, <object>args[0])


cdef PyMethodDef _ENTER_BOUND, _EXIT_BOUND, _ENTER_LOCK, _EXIT_LOCK
_ENTER_BOUND.ml_name = _ENTER_LOCK.ml_name = b"__enter__"
_EXIT_BOUND.ml_name = _EXIT_LOCK.ml_name = b"__exit__"
_ENTER_BOUND.ml_flags = _ENTER_LOCK.ml_flags = METH_NOARGS
_EXIT_BOUND.ml_flags = _EXIT_LOCK.ml_flags = METH_FASTCALL
_ENTER_BOUND.ml_doc = _ENTER_LOCK.ml_doc = b"Take the lock; return it."
_EXIT_BOUND.ml_doc = _EXIT_LOCK.ml_doc = b"Release the lock taken by __enter__."
_ENTER_BOUND.ml_meth = <void *>_enter_bound
_EXIT_BOUND.ml_meth = <void *>_exit_bound
_ENTER_LOCK.ml_meth = <void *>_enter_lock
_EXIT_LOCK.ml_meth = <void *>_exit_lock


@cython.final
cdef class _LockMethod:
    """``RegionLock.__enter__`` or ``__exit__``: the kept bound function where there is one,
    else a function bound to the lock now, as a method would be."""
    cdef bint entering

    def __get__(self, instance, owner):
        cdef RegionLock lock
        if instance is None:
            return self
        lock = <RegionLock?>instance
        if lock.kept_enter is not None:
            return lock.kept_enter if self.entering else lock.kept_exit
        return PyCFunction_NewEx(&_ENTER_LOCK if self.entering else &_EXIT_LOCK, lock, None)


cdef _LockMethod _lock_method(bint entering):
    cdef _LockMethod method = _LockMethod()
    method.entering = entering
    return method


@cython.binding(False)
cdef class RegionLock:
    """A region's process-shared lock, used as a context manager.

    Taking it raises ``TimeoutError`` when ``timeout`` seconds pass, ``OwnerDiedError``
    (the lock is then free again) when its previous holder died holding it, and
    ``RuntimeError`` when this thread already holds it: it is not re-entrant.
    """

    def __cinit__(self, Bookkeeping owner not None, timeout=None):
        self.owner = owner
        self.timeout = timeout_seconds(timeout)

    def __dealloc__(self):
        if self.bound_to is not None:
            (<_BoundTo>self.bound_to).lock = NULL

    cdef void keep_bound_methods(self):
        cdef _BoundTo bound = _BoundTo()
        bound.owner = self.owner
        bound.timeout = self.timeout
        bound.lock = <PyObject *>self
        self.bound_to = bound
        self.kept_enter = PyCFunction_NewEx(&_ENTER_BOUND, bound, None)
        self.kept_exit = PyCFunction_NewEx(&_EXIT_BOUND, bound, None)

    def acquire(self):
        """Take the lock (see the class docstring for the errors); return True."""
        self.owner.acquire_user(self.timeout)
        return True

    def release(self):
        """Release the lock; ``RuntimeError`` if this thread does not hold it."""
        self.owner.release_user()

    __enter__ = _lock_method(True)
    __exit__ = _lock_method(False)


@cython.binding(False)
cdef class RegionLocking:
    """The base of ``Region`` (through ``ManagedMemory``) that hands out its lock.

    Compiled, with the lock kept in a slot of the object rather than its ``__dict__``,
    because ``with region.lock():`` calls ``lock()`` every time and a Python frame or an
    attribute lookup would cost more than the lock itself. The class it is mixed into
    provides ``_writable(what)``, the region's ``Bookkeeping`` if it may be changed, and
    forgets the cached lock at ``close()`` by setting ``_lock_forever`` to None.
    """

    cdef public object _lock_forever  # the lock without a timeout, made once

    def lock(self, timeout=None):
        """The region's lock: shared by every process, survives its holder's death, not re-entrant.

        A context manager. It waits with the GIL released; ``timeout`` (seconds) raises
        ``TimeoutError`` when it passes. If the previous holder died holding the lock,
        taking it raises ``mshare.OwnerDiedError`` and leaves the lock *free*: the data it
        guarded may be half-updated, so check or repair it, then take the lock again. A
        lock is never left held by a dead process. The allocator has a lock of its own, so
        ``alloc`` and ``array`` may be called while holding this one.

        >>> with region.lock(timeout=5):
        ...     counter[0] += 1
        """
        forever = self._lock_forever
        if timeout is None and forever is not None:
            return forever
        bookkeeping = self._writable("lock()")
        if timeout is not None:
            return bookkeeping.lock(timeout)
        forever = bookkeeping.lock()
        (<RegionLock>forever).keep_bound_methods()
        self._lock_forever = forever
        return forever


cdef class Bookkeeping:
    """The lock, allocator and name table of one region, over this process's mapping of it.

    Made only by ``Bookkeeping.over_mapping``. The caller calls ``detach()`` before
    unmapping; until then the mapping stays referenced, and while a thread of this process
    holds the lock this object stays alive even if nothing else references it.
    """

    def __cinit__(self, token=None):
        if token is not _CONSTRUCT:
            raise TypeError("Bookkeeping objects are made by Bookkeeping.over_mapping(), "
                            "from a live mapping")
        _remember(self)

    @staticmethod
    def over_mapping(mapping, data_length, arena_size, *, name=None, keepalive=None):
        """The bookkeeping of the region ``mapping`` (a ``mshare._core.Mapping``) maps.

        Its area of ``BOOKKEEPING_SIZE`` bytes starts ``data_length`` bytes into the
        mapping and manages the arena of the mapping's first ``arena_size`` bytes. Every
        address comes from the mapping itself; the mapping, and ``keepalive`` (its owner,
        say), stay referenced until ``detach()``. ``name`` only labels errors."""
        cdef Bookkeeping self
        if not isinstance(mapping, Mapping):
            raise TypeError(f"mapping must be a mshare._core.Mapping, not {type(mapping).__name__}")
        for value, what in ((data_length, "data_length"), (arena_size, "arena_size")):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{what} must be an int, not {type(value).__name__}")
        if not mapping.mapped:
            raise ValueError(f"{mapping.label or 'the mapping'} is closed")
        if data_length < 0 or data_length % 64 or data_length > mapping.length - BOOKKEEPING_SIZE:
            raise ValueError(f"a bookkeeping area at offset {data_length} does not fit in a "
                             f"mapping of {mapping.length} bytes")
        if not 0 <= arena_size <= data_length:
            raise ValueError(f"an arena of {arena_size} bytes overlaps the bookkeeping area "
                             f"at offset {data_length}")
        self = Bookkeeping.__new__(Bookkeeping, _CONSTRUCT)
        self.keepalive = (mapping, keepalive)
        self.name = name
        self.bookkeeping_addr = mapping.addr + data_length
        self.arena.bk = <ms_bookkeeping_t *><uintptr_t>self.bookkeeping_addr
        self.arena.start = mapping.addr
        self.arena.size = arena_size
        usable = arena_size & ~15
        self.arena.end = self.arena.start + (usable if usable >= MS_MIN_BLOCK else 0)
        return self

    @property
    def arena_addr(self):
        return self.arena.start

    @property
    def arena_size(self):
        return self.arena.size

    @property
    def locks_held(self):
        """1 while a live thread of this process holds the region's lock, else 0."""
        return int(self.holds_lock())

    cdef bint holds_lock(self):
        if self.held_by and not ms_holder_alive(self.held_by):
            self.drop_hold()  # the holding thread ended without releasing
        return self.held_by != 0

    cdef void drop_hold(self):
        self.held_by = 0
        Py_DECREF(self)

    cdef str closed_message(self):
        return f"{self.name or 'the region'} is closed"

    cdef ms_bookkeeping_t *usable(self) except NULL:
        """The memory, if this object is neither closed nor closing (the header checked once)."""
        cdef ms_bookkeeping_t *bk = self.arena.bk
        if bk == NULL or self.closing:
            raise ValueError(self.closed_message())
        if not self.header_checked:
            self.check_header(bk)
        return bk

    cdef int check_header(self, ms_bookkeeping_t *bk) except -1:
        cdef uint64_t magic = ms_load(&bk.magic)
        cdef uint32_t version = ms_peek32(&bk.version), layout_size = ms_peek32(&bk.layout_size)
        cdef uint64_t arena_addr = ms_peek(&bk.arena_addr), arena_size = ms_peek(&bk.arena_size)
        if magic != MS_MAGIC:
            raise CorruptBookkeepingError(
                "the region's bookkeeping area is not initialized"
                if magic == 0 else "the region's bookkeeping area holds foreign data", self.name)
        if version != MS_VERSION or layout_size != sizeof(ms_bookkeeping_t):
            raise CorruptBookkeepingError(
                f"the region's bookkeeping is format {version} of {layout_size} bytes; this "
                f"mshare reads format {MS_VERSION}", self.name)
        if arena_addr != self.arena.start or arena_size != self.arena.size:
            raise CorruptBookkeepingError(
                f"the region's bookkeeping manages 0x{arena_addr:x}+{arena_size}, not "
                f"0x{self.arena.start:x}+{self.arena.size}", self.name)
        # Read once: a writer changing it later only makes check words fail.
        self.arena.key = ms_peek(&bk.block_key)
        self.header_checked = True
        return 0

    cdef ms_bookkeeping_t *enter(self) except NULL:
        cdef ms_bookkeeping_t *bk = self.usable()
        self.in_flight += 1
        return bk

    cdef void leave(self) noexcept:
        self.in_flight -= 1

    def initialize(self):
        """Set up the lock, allocator and name table on zero-filled memory (a data object
        just made: the name table is left as it is, all zeros).

        Called once by the region's creator before anyone else can see the region. Calling
        it again on an initialized area only checks it; foreign data is refused."""
        cdef ms_bookkeeping_t *bk = self.arena.bk
        if bk == NULL:
            raise ValueError(self.closed_message())
        if ms_load(&bk.magic) != 0:
            self.check_header(bk)
            return
        # The memory is a data object just made, so zero-filled: clearing the name table
        # too would only fault a dozen pages in to write zeros over zeros.
        memset(bk, 0, <size_t>(<char *>bk.slots - <char *>bk))
        bk.version = MS_VERSION
        bk.layout_size = sizeof(ms_bookkeeping_t)
        bk.arena_addr = self.arena.start
        bk.arena_size = self.arena.size
        bk.block_key = int.from_bytes(os.urandom(8), "little")
        ms_store(&bk.magic, MS_MAGIC)

    def detach(self):
        """Stop using the memory, before the caller unmaps it; later calls raise ValueError.

        ``RuntimeError`` while a thread of this process holds the lock. Otherwise threads
        waiting for either lock are woken and raise ``ValueError``, and this returns once
        no call of this process is using the memory."""
        cdef ms_bookkeeping_t *bk = self.arena.bk
        if bk == NULL:
            return
        if self.holds_lock():
            raise RuntimeError("the region's lock is held by this process; release it first")
        self.closing = True
        ms_futex_wake(&bk.user_lock, INT_MAX)
        ms_futex_wake(&bk.internal_lock, INT_MAX)
        while self.in_flight > 0:
            with nogil:
                usleep(1000)
        if self.holds_lock():  # taken by a call that was in flight
            self.closing = False
            raise RuntimeError("the region's lock was taken by this process while closing; "
                               "release it first")
        self.arena.bk = NULL
        self.keepalive = None

    # The user lock.

    def lock(self, timeout=None):
        """A new ``RegionLock`` context manager on the region's lock.

        Not cached here: a cached lock would refer back to this object, and the cycle would
        keep the mapping alive until the cyclic collector ran (``Region`` caches it)."""
        return RegionLock(self, timeout)

    cdef int acquire_user(self, double timeout) except -1:
        cdef ms_bookkeeping_t *bk = self.usable()
        cdef uint64_t me = ms_self_word()
        cdef uint64_t observed = 0
        if me == 0:
            me = self_word()
        if not ms_lock_swap(&bk.user_lock, &observed, me) and not ms_lock_spin(&bk.user_lock, me):
            self.wait_user(bk, me, ms_lock_peek(&bk.user_lock), timeout)
        self.hold(me)
        return 0

    cdef void hold(self, uint64_t me) noexcept:
        # Held: keep this object, and through it the mapping, alive until released.
        Py_INCREF(self)
        self.held_by = me

    cdef int wait_user(self, ms_bookkeeping_t *bk, uint64_t me, uint64_t observed,
                       double timeout) except -1:
        cdef int outcome
        self.in_flight += 1
        try:
            outcome = wait_for(&bk.user_lock, me, observed, timeout, &self.closing)
        finally:
            self.in_flight -= 1
        if outcome == MS_LOCK_TAKEN:
            return 0
        if outcome == MS_LOCK_OWNER_DIED:
            self.holds_lock()  # forgets a hold of this process's thread that died
            raise OwnerDiedError(
                "the previous holder of the region's lock died holding it; the lock is free "
                "again, but the data it protects may be half-updated", self.name)
        if outcome == MS_LOCK_TIMED_OUT:
            raise TimeoutError(errno.ETIMEDOUT,
                               f"timed out after {timeout} s waiting for the region's lock",
                               self.name)
        if outcome == MS_LOCK_CLOSED:
            raise ValueError(f"{self.name or 'the region'} was closed while this thread "
                             "waited for its lock")
        if self.held_by != me:
            # The word names this thread, which this process knows does not hold it: a
            # process that may write the region wrote it there.
            raise CorruptBookkeepingError(
                "the region's lock names this thread, which does not hold it", self.name)
        raise RuntimeError("this thread already holds the region's lock; it is not re-entrant")

    cdef int release_user(self) except -1:
        cdef ms_bookkeeping_t *bk = self.arena.bk
        cdef uint64_t me = ms_self_word()
        if me == 0 or self.held_by != me:
            raise RuntimeError("the region's lock is not held by this thread")
        ms_lock_release(&bk.user_lock)
        self.drop_hold()
        return 0

    # The internal lock: every allocator and name-table change runs between begin and end.

    cdef ms_bookkeeping_t *begin(self) except NULL:
        cdef ms_bookkeeping_t *bk = self.enter()
        try:
            self.take_internal(bk)
        except BaseException:
            self.leave()
            raise
        if ms_peek(&bk.busy):
            try:
                self.repair(bk)
            except BaseException:
                ms_lock_release(&bk.internal_lock)
                self.leave()
                raise
        bk.busy = 1
        ms_fence()
        return bk

    cdef int take_internal(self, ms_bookkeeping_t *bk) except -1:
        cdef uint64_t me = self_word()
        cdef uint64_t observed = 0
        cdef double deadline = monotonic() + INTERNAL_LOCK_TIMEOUT
        cdef int outcome
        while not ms_lock_swap(&bk.internal_lock, &observed, me):
            outcome = wait_for(&bk.internal_lock, me, observed,
                               max(0.0, deadline - monotonic()), &self.closing)
            if outcome == MS_LOCK_TAKEN:
                return 0
            if outcome == MS_LOCK_OWNER_DIED and monotonic() < deadline:
                observed = 0  # what the dead holder left half-done, the busy word tells
                continue
            if outcome == MS_LOCK_CLOSED:
                raise ValueError(f"{self.name or 'the region'} was closed while this thread "
                                 "waited for its allocator lock")
            if outcome == MS_LOCK_DEADLOCK:
                raise CorruptBookkeepingError(
                    "the region's allocator lock names this thread, which does not hold it",
                    self.name)
            raise TimeoutError(
                errno.ETIMEDOUT,
                f"the region's allocator lock stayed held for {INTERNAL_LOCK_TIMEOUT:g} s, "
                f"far longer than any allocator call takes: its holder is stopped, or a "
                f"process that may write the region keeps writing over the lock", self.name)
        return 0

    cdef void end(self, ms_bookkeeping_t *bk, bint clean) noexcept:
        """Release the internal lock; unless ``clean``, leave ``busy`` set so the next
        holder runs the repair (and reports the damage) again."""
        if clean:
            bk.pending_alloc = 0
            bk.pending_free = 0
            ms_store(&bk.busy, 0)
        ms_lock_release(&bk.internal_lock)
        self.leave()

    cdef int repair(self, ms_bookkeeping_t *bk) except -1:
        """Undo or finish what a holder that died mid-change left behind."""
        cdef Arena *arena = &self.arena
        cdef ms_slot_t *slot
        cdef uint64_t pending, addr
        cdef uint32_t seq, state
        cdef unsigned i
        bk.repairs = ms_peek(&bk.repairs) + 1
        rebuild(arena, self.name)
        try:
            pending = ms_peek(&bk.pending_alloc)
            if pending and live_block(arena, pending):
                release(arena, pending, False, self.name)  # its caller never saw it
            pending = ms_peek(&bk.pending_free)
            if pending and live_block(arena, pending):
                release(arena, pending, False, self.name)  # its caller asked for this
            for i in range(MS_NAME_CAPACITY):
                slot = &bk.slots[i]
                seq = ms_peek32(&slot.seq)
                state = ms_peek32(&slot.state)
                if not seq & 1 and state != MS_SLOT_CREATING and state != MS_SLOT_DELETING:
                    continue
                if state != MS_SLOT_LIVE:
                    addr = ms_peek(&slot.addr)
                    if addr and live_block(arena, addr):
                        release(arena, addr, True, self.name)
                    slot.state = MS_SLOT_EMPTY
                    slot.addr = 0
                if seq & 1:
                    ms_store32(&slot.seq, seq + 1)
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
            payload = allocate(&self.arena, size, alignment, &bk.pending_alloc, False, self.name)
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
            release(&self.arena, payload, False, self.name)
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
        cdef uint64_t head
        cdef uint32_t state
        cdef unsigned i
        try:
            stats = verify_allocator(&self.arena, self.name)
            stats["repairs"] = ms_peek(&bk.repairs)
            stats["names"] = 0
            for i in range(MS_NAME_CAPACITY):
                state = ms_peek32(&bk.slots[i].state)
                if state == MS_SLOT_LIVE:
                    stats["names"] += 1
                    if not used_block(&self.arena, ms_peek(&bk.slots[i].addr), &head):
                        raise CorruptBookkeepingError(f"name slot {i} has no block", self.name)
                elif state != MS_SLOT_EMPTY or ms_peek32(&bk.slots[i].seq) & 1:
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
            if (ms_peek32(&bk.slots[i].state) == MS_SLOT_LIVE
                    and ms_peek32(&bk.slots[i].name_hash) == h
                    and holds_name(&bk.slots[i], name)):
                return i
        return -1

    def create_named(self, name, nbytes, dtype, shape, align=64, zero=False):
        """Allocate ``nbytes`` and record it as ``name`` with a dtype string and a shape.

        With ``zero``, the memory is zero-filled before the name can be found. FileExistsError
        if the name is taken, RegionFullError if the table or arena is full. Every argument
        is checked before anything shared changes."""
        cdef bytes key = encode_name(name)
        cdef bytes dtype_key = check_dtype_string(dtype)
        cdef tuple dims = check_shape(shape)
        cdef uint64_t size, alignment, payload
        cdef ms_bookkeeping_t *bk
        cdef ms_slot_t *slot = NULL
        cdef uint32_t seq
        cdef unsigned i
        size, alignment = check_request(nbytes, align)
        bk = self.begin()
        try:
            if self.find_slot(bk, key) >= 0:
                raise FileExistsError(errno.EEXIST, f"an object named {name!r} already exists",
                                      self.name)
            for i in range(MS_NAME_CAPACITY):
                if ms_peek32(&bk.slots[i].state) == MS_SLOT_EMPTY:
                    slot = &bk.slots[i]
                    break
            else:
                raise RegionFullError(f"the region's name table is full ({NAME_CAPACITY} names)",
                                      self.name)
            seq = ms_peek32(&slot.seq) | 1
            ms_store32(&slot.seq, seq)
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
                payload = allocate(&self.arena, size, alignment, &slot.addr, True, self.name)
            except BaseException:
                slot.state = MS_SLOT_EMPTY
                slot.addr = 0
                ms_store32(&slot.seq, seq + 1)
                raise
            if zero:
                memset(<void *><uintptr_t>payload, 0, size)
            ms_store32(&slot.state, MS_SLOT_LIVE)
            ms_store32(&slot.seq, seq + 1)
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

        Takes no lock, so it works in read-only attachers too. The slot is copied and only
        the copy is checked and used."""
        cdef bytes key = encode_name(name)
        cdef ms_bookkeeping_t *bk = self.enter()
        try:
            return self.look_up(bk, key, name)
        finally:
            self.leave()

    cdef object look_up(self, ms_bookkeeping_t *bk, bytes key, object name):
        cdef uint32_t h = name_hash(key)
        cdef ms_slot_t copy
        cdef unsigned i
        for i in range(MS_NAME_CAPACITY):
            if ms_peek32(&bk.slots[i].name_hash) != h or not read_slot(&bk.slots[i], &copy):
                continue
            if not holds_name(&copy, key):
                continue
            if (copy.ndim > MS_MAX_DIMS or copy.dtype[MS_DTYPE_BYTES - 1]
                    or copy.addr < self.arena.start + MS_HEADER or copy.addr > self.arena.end
                    or copy.nbytes > self.arena.end - copy.addr):
                raise CorruptBookkeepingError(f"the entry for {name!r} is damaged", self.name)
            return (copy.addr, copy.nbytes,
                    fixed_string(copy.dtype, MS_DTYPE_BYTES).decode("ascii", errors="replace"),
                    tuple(copy.shape[d] for d in range(copy.ndim)))
        return None

    def named(self):
        """The names of all named objects, sorted. Takes no lock."""
        cdef ms_bookkeeping_t *bk = self.enter()
        cdef ms_slot_t copy
        cdef unsigned i
        found = []
        try:
            for i in range(MS_NAME_CAPACITY):
                if (ms_peek32(&bk.slots[i].state) == MS_SLOT_LIVE
                        and read_slot(&bk.slots[i], &copy)):
                    found.append(fixed_string(copy.name, MS_NAME_BYTES).decode(errors="replace"))
        finally:
            self.leave()
        return sorted(found)

    def delete_named(self, name):
        """Free the object called ``name`` and forget the name; FileNotFoundError if absent."""
        cdef bytes key = encode_name(name)
        cdef ms_bookkeeping_t *bk = self.begin()
        cdef ms_slot_t *slot
        cdef uint64_t addr, head
        cdef uint32_t seq
        cdef int index
        try:
            index = self.find_slot(bk, key)
            if index < 0:
                raise FileNotFoundError(errno.ENOENT, f"no object named {name!r}", self.name)
            slot = &bk.slots[index]
            seq = ms_peek32(&slot.seq) | 1
            ms_store32(&slot.seq, seq)
            ms_fence()
            ms_store32(&slot.state, MS_SLOT_DELETING)
            addr = ms_peek(&slot.addr)
            damaged = not used_block(&self.arena, addr, &head)
            if not damaged:
                try:
                    release(&self.arena, addr, True, self.name)
                except ValueError:
                    damaged = True
            slot.state = MS_SLOT_EMPTY
            slot.addr = 0
            ms_store32(&slot.seq, seq + 1)
            if damaged:
                raise CorruptBookkeepingError(
                    f"{name!r} pointed at no allocated block of its own; the name was removed "
                    f"and the memory left alone", self.name)
        except CorruptBookkeepingError:
            self.end(bk, False)
            raise
        except BaseException:
            self.end(bk, True)
            raise
        self.end(bk, True)


# Plain weak references without callbacks: freeing a Bookkeeping runs no Python code,
# so no KeyboardInterrupt can land (and be lost) in a finalizer of this module.
_instances = []
cdef Py_ssize_t _live_at_last_prune = 0


cdef int _remember(Bookkeeping bookkeeping) except -1:
    global _live_at_last_prune
    _instances.append(weakref.ref(bookkeeping))
    if len(_instances) > 2 * _live_at_last_prune + 64:
        _instances[:] = [ref for ref in _instances if ref() is not None]
        _live_at_last_prune = len(_instances)
    return 0


def _forget_after_fork():
    # A forked child inherits the memory, not the parent's threads: their holds and their
    # calls in flight stay with the parent.
    for ref in _instances:
        bookkeeping = ref()
        if bookkeeping is None:
            continue
        (<Bookkeeping>bookkeeping).in_flight = 0
        if (<Bookkeeping>bookkeeping).held_by:
            (<Bookkeeping>bookkeeping).drop_hold()


os.register_at_fork(after_in_child=_forget_after_fork)


cdef tuple check_request(object nbytes, object align):
    if not isinstance(nbytes, int) or isinstance(nbytes, bool):
        raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
    if not isinstance(align, int) or isinstance(align, bool):
        raise TypeError(f"align must be an int, not {type(align).__name__}")
    if not 0 <= nbytes < 1 << 64:
        raise ValueError(f"nbytes must be from 0 to 2**64 - 1, not {nbytes}")
    if align < 1 or align > MAX_ALIGN or align & (align - 1):
        raise ValueError(f"align must be a power of two from 1 to {MAX_ALIGN}, not {align}")
    return nbytes, align


cdef bytes check_dtype_string(object dtype):
    if not isinstance(dtype, str):
        raise TypeError(f"a dtype string must be a str, not {type(dtype).__name__}")
    if not dtype.isascii() or not 1 <= len(dtype) <= DTYPE_MAX_BYTES or "\0" in dtype:
        raise ValueError(f"a dtype string must be 1-{DTYPE_MAX_BYTES} ASCII characters, "
                         f"not {dtype!r}")
    return dtype.encode("ascii")


cdef tuple check_shape(object shape):
    if not isinstance(shape, tuple):
        raise TypeError(f"a shape must be a tuple, not {type(shape).__name__}")
    if len(shape) > MAX_DIMS:
        raise ValueError(f"a shape has at most {MAX_DIMS} sizes, not {len(shape)}")
    for extent in shape:
        if not isinstance(extent, int) or isinstance(extent, bool):
            raise TypeError(f"shape sizes must be ints, not {shape!r}")
        if not 0 <= extent < 1 << 64:
            raise ValueError(f"shape sizes must be from 0 to 2**64 - 1, not {shape!r}")
    return shape
