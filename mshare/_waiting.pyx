# cython: language_level=3, embedsignature=True
"""Events and conditions: named, process-shared objects that processes wait on.

Each is a named block of one cache line in the region's arena whose first word is a futex
word (``_waiting.h``): an event's set bit and count of sets, a condition's sequence. The
block's address comes from the name table, checked there against this process's own arena
bounds, and is kept privately; the word is only ever compared, never followed, so a writer
scribbling on it can make a waiter wake early or time out, nothing else.

A wait sleeps on the futex in slices of ``WAIT_SLICE`` seconds with the GIL released, and
between slices runs signal handlers (Ctrl-C raises ``KeyboardInterrupt``) and notices that
the region is closing (it raises ``ValueError``). Every call counts itself in flight in the
region's ``Bookkeeping``, so ``close()`` never unmaps under a waiter.
"""

from cpython.exc cimport PyErr_CheckSignals
from libc.limits cimport INT_MAX
from libc.stdint cimport uint32_t, uint64_t, uintptr_t

import errno

from mshare._mutex cimport monotonic, ms_self_word, timeout_seconds
from mshare._shared cimport Bookkeeping

from mshare.errors import CorruptBookkeepingError, OwnerDiedError


cdef extern from "_waiting.h" nogil:
    uint32_t MS_EVENT_SET
    uint32_t ms_word_peek(uint64_t *word)
    int ms_event_set(uint64_t *word) noexcept
    int ms_event_clear(uint64_t *word) noexcept
    void ms_condition_notify(uint64_t *word, int count)
    int ms_futex_wait(uint64_t *word, uint32_t expected, long nanoseconds)


# The dtype field of a name slot tells what a named object is; these are no numpy dtype,
# so an event is never mistaken for an array.
EVENT_KIND = "~event"
CONDITION_KIND = "~condition"
KINDS = {EVENT_KIND: "event", CONDITION_KIND: "condition", "~queue": "queue"}
# Bytes of the block behind each: one cache line, so unrelated words do not share it.
WORD_BLOCK = 64

# A waiter wakes at least this often (seconds) to run signal handlers and see a close.
cdef double WAIT_SLICE = 0.02

# Only find_or_create() may construct, so no address ever comes from a caller.
cdef object _CONSTRUCT = object()


cdef class Waitable:
    """What events and conditions share: their name, their region and their word."""

    cdef Bookkeeping owner
    cdef uint64_t *word
    cdef readonly str name

    def __cinit__(self, token, Bookkeeping owner not None, uint64_t addr, str name):
        if token is not _CONSTRUCT:
            raise TypeError(f"{type(self).__name__} objects are made by region."
                            f"{type(self).__name__.lower()}(name)")
        self.owner = owner
        self.word = <uint64_t *><uintptr_t>addr
        self.name = name

    def __repr__(self):
        return f"<mshare {type(self).__name__.lower()} {self.name!r} in {self.owner.name!r}>"

    cdef int sleep(self, uint32_t observed, double deadline, uint32_t *current) except -1:
        return sleep_on(self.owner, self.word, observed, deadline, current, self.name)


cdef int sleep_on(Bookkeeping owner, uint64_t *word, uint32_t observed, double deadline,
                  uint32_t *current, str what) except -1:
    """Sleep until the futex half of ``word`` no longer reads ``observed`` (1, its value in
    ``current``) or ``deadline`` passes (0; < 0 is never). The caller counts itself in
    flight; ``what`` names the object in errors."""
    cdef double remaining
    while True:
        PyErr_CheckSignals()
        if owner.closing:
            raise ValueError(f"{owner.name or 'the region'} was closed while this thread "
                             f"waited on {what!r}")
        current[0] = ms_word_peek(word)
        if current[0] != observed:
            return 1
        remaining = WAIT_SLICE
        if deadline >= 0:
            remaining = deadline - monotonic()
            if remaining <= 0:
                return 0
            remaining = min(remaining, WAIT_SLICE)
        with nogil:
            ms_futex_wait(word, observed, <long>(remaining * 1e9) + 1)


cdef double deadline_of(object timeout) except? -2:
    cdef double span = timeout_seconds(timeout)
    return -1 if span < 0 else monotonic() + span


cdef class Event(Waitable):
    """A process-shared event, like ``threading.Event``: ``set``, ``clear``, ``is_set``,
    ``wait(timeout)``."""

    def is_set(self):
        """True if the event is set."""
        self.owner.enter()
        try:
            return bool(ms_word_peek(self.word) & MS_EVENT_SET)
        finally:
            self.owner.leave()

    def set(self):
        """Set the event and wake every process waiting for it."""
        self.change(ms_event_set)

    def clear(self):
        """Clear the event; later ``wait`` calls block until it is set again."""
        self.change(ms_event_clear)

    cdef int change(self, int (*operation)(uint64_t *word) noexcept nogil) except -1:
        self.owner.enter()
        try:
            if operation(self.word) < 0:
                raise CorruptBookkeepingError(
                    f"the word of {self.name!r} kept changing under every try: a process "
                    f"that may write the region keeps writing over it", self.owner.name)
        finally:
            self.owner.leave()
        return 0

    def wait(self, timeout=None):
        """Block until the event is set; True then, False when ``timeout`` seconds pass.

        A set that a ``clear`` undid before this waiter woke still counts: it returns True."""
        cdef double deadline = deadline_of(timeout)
        cdef uint32_t observed, current
        self.owner.enter()
        try:
            observed = ms_word_peek(self.word)
            while not observed & MS_EVENT_SET:
                if not self.sleep(observed, deadline, &current):
                    return False
                if current >> 1 != observed >> 1:
                    return True  # set at least once since this wait began
                observed = current
            return True
        finally:
            self.owner.leave()


cdef class Condition(Waitable):
    """A process-shared condition variable used with the region's lock.

    >>> with region.lock():
    ...     ready = cond.wait_for(lambda: counter[0] > 0, timeout=5)

    ``wait`` releases the lock, sleeps until a ``notify`` (or ``timeout``) and takes the
    lock again before it returns or raises. Wake-ups may be spurious (a notify wakes at
    least the waiters it names, and a writer of the region may move the word): test the
    predicate, which ``wait_for`` does. If the lock's holder died while this waiter
    re-took it, the lock is taken anyway and ``OwnerDiedError`` raised, so the ``with``
    block releases it as usual.
    """

    cdef int check_held(self, str what) except -1:
        cdef uint64_t me = ms_self_word()
        if me == 0 or self.owner.held_by != me:
            raise RuntimeError(f"{what} on condition {self.name!r} needs the region's lock "
                               f"held by this thread")
        return 0

    cdef int retake(self) except -1:
        try:
            self.owner.acquire_user(-1)
        except OwnerDiedError:
            self.owner.acquire_user(-1)  # the dead holder's lock is free: take it, then tell
            raise
        return 0

    def wait(self, timeout=None):
        """Release the lock, wait for a notify, re-take the lock: False if ``timeout``
        seconds passed first, else True."""
        cdef double deadline = deadline_of(timeout)
        cdef uint32_t observed, current
        cdef int woken
        self.owner.enter()
        try:
            self.check_held("wait()")
            observed = ms_word_peek(self.word)
            self.owner.release_user()
            try:
                woken = self.sleep(observed, deadline, &current)
            except BaseException:
                try:
                    self.retake()
                except ValueError:
                    pass  # closed: what interrupted the sleep says more
                raise
            self.retake()
            return bool(woken)
        finally:
            self.owner.leave()

    def wait_for(self, predicate, timeout=None):
        """Wait until ``predicate()`` is true, at most ``timeout`` seconds; return its last
        value. Call with the region's lock held, as ``threading.Condition.wait_for``."""
        cdef double deadline = deadline_of(timeout)
        cdef double remaining
        result = predicate()
        while not result:
            if deadline >= 0:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    break
                self.wait(remaining)
            else:
                self.wait()
            result = predicate()
        return result

    def notify(self, n=1):
        """Wake at least ``n`` processes waiting on the condition (the lock held)."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n must be >= 0, not {n}")
        self.notify_count(min(n, INT_MAX), "notify()")

    def notify_all(self):
        """Wake every process waiting on the condition (the lock held)."""
        self.notify_count(INT_MAX, "notify_all()")

    cdef int notify_count(self, int count, str what) except -1:
        self.owner.enter()
        try:
            self.check_held(what)
            if count:
                ms_condition_notify(self.word, count)
        finally:
            self.owner.leave()
        return 0


def find_or_create(Bookkeeping bookkeeping not None, name, str kind, bint create=True):
    """The event or condition (``kind``: ``EVENT_KIND`` or ``CONDITION_KIND``) called
    ``name``, made zeroed if there is none and ``create`` is true. ``FileNotFoundError``
    without it, ``TypeError`` if the name holds another kind of object."""
    cdef type made = Event if kind == EVENT_KIND else Condition
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    found = bookkeeping.find_named(name)
    if found is None and create:
        try:
            addr = bookkeeping.create_named(name, WORD_BLOCK, kind, (), WORD_BLOCK, zero=True)
            return made(_CONSTRUCT, bookkeeping, addr, name)
        except FileExistsError:
            found = bookkeeping.find_named(name)  # another process made it first
    if found is None:
        raise FileNotFoundError(errno.ENOENT, f"no {KINDS[kind]} named {name!r}",
                                bookkeeping.name)
    addr, nbytes, stored_kind, shape = found
    if stored_kind != kind:
        what = KINDS.get(stored_kind, "array")
        raise TypeError(f"{name!r} is a named {what}, not "
                        f"{'an event' if kind == EVENT_KIND else 'a condition'}")
    if nbytes != WORD_BLOCK or addr % WORD_BLOCK:
        raise CorruptBookkeepingError(
            f"the {KINDS[kind]} {name!r} is recorded as {nbytes} bytes at 0x{addr:x}, not "
            f"{WORD_BLOCK} aligned bytes", bookkeeping.name)
    return made(_CONSTRUCT, bookkeeping, addr, name)
