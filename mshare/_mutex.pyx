# cython: language_level=3, embedsignature=True
"""Region locks on a futex word: the wait, the owner-death check, the timeout.

A lock is one 64-bit word in shared memory (layout in ``_futex.h``): 0 when free, else
the holder's thread id and start time. Taking a free lock is one compare-and-swap, done by
the caller; this module does everything that happens when that fails. A waiter sets the
WAITERS bit and sleeps on the futex in slices of ``WAIT_SLICE`` seconds with the GIL
released. Between slices it runs signal handlers (Ctrl-C works), notices that the region
was closed, and checks through ``/proc`` that the holder still lives: a word whose holder
is gone, a zombie, or a thread with another start time (its id was reused) is cleared with
one compare-and-swap, and exactly the waiter whose swap succeeded is told.

Whatever the word holds, a writer's garbage included, it is only compared and used to name
a ``/proc`` file; it is never followed, so the worst a scribble can do is make a waiter
wait until its timeout or report a dead owner.
"""

from cpython.exc cimport PyErr_CheckSignals
from libc.limits cimport INT_MAX
from libc.stdint cimport uint32_t, uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import math


cdef extern from "_futex.h" nogil:
    int ms_futex_wait(uint64_t *word, uint32_t expected, long nanoseconds)


# A waiter wakes at least this often (seconds) to run signal handlers and check the holder.
cdef double WAIT_SLICE = 0.02


cdef double monotonic() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


cdef uint64_t self_word() except 0:
    """This thread's identity as a lock word (cached per thread)."""
    cdef uint64_t word = ms_self_word()
    if word == 0:
        raise OSError("cannot read this thread's id and start time from /proc, which the "
                      "region lock needs to tell live holders from dead ones")
    return word


cdef int wait_for(uint64_t *word, uint64_t me, uint64_t observed, double timeout,
                  const bint *closing) except -1:
    """Wait for the lock at ``word`` after a failed first swap saw ``observed``.

    Returns an ``ms_lock_outcome``: TAKEN (held by ``me`` now), OWNER_DIED (a dead holder's
    word was cleared by this waiter; the lock is free, not taken), TIMED_OUT, CLOSED
    (``closing`` became true) or DEADLOCK (``me`` already holds it). ``timeout`` < 0
    waits forever. Raises what a signal handler raises."""
    cdef double now = monotonic()
    cdef double deadline = now + timeout, next_check = now + WAIT_SLICE
    cdef double remaining = WAIT_SLICE
    cdef uint64_t flagged
    while True:
        PyErr_CheckSignals()
        if closing[0]:
            return MS_LOCK_CLOSED
        if observed == 0:
            # Having waited, take it with WAITERS set: other waiters may still sleep.
            if ms_lock_swap(word, &observed, me | MS_LOCK_WAITERS):
                return MS_LOCK_TAKEN
            continue
        if observed & ~MS_LOCK_WAITERS == me:
            return MS_LOCK_DEADLOCK
        now = monotonic()
        if timeout >= 0:
            remaining = deadline - now
        # Once a slice, however often the word changes meanwhile (a writer may keep it
        # changing), and once more before giving up.
        if now >= next_check or remaining <= 0:
            next_check = now + WAIT_SLICE
            if not ms_holder_alive(observed):
                if ms_lock_swap(word, &observed, 0):
                    ms_futex_wake(word, INT_MAX)
                    return MS_LOCK_OWNER_DIED
                continue
            if remaining <= 0:
                return MS_LOCK_TIMED_OUT
        if not observed & MS_LOCK_WAITERS:
            flagged = observed | MS_LOCK_WAITERS
            if not ms_lock_swap(word, &observed, flagged):
                continue
            observed = flagged
        remaining = min(remaining, WAIT_SLICE)
        with nogil:
            ms_futex_wait(word, <uint32_t>observed, <long>(remaining * 1e9) + 1)
        observed = ms_lock_peek(word)


cdef double timeout_seconds(object timeout) except? -2:
    """None (wait forever) becomes -1; anything else must be a number of seconds >= 0."""
    if timeout is None:
        return -1
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or a number of seconds, not {timeout!r}")
    value = float(timeout)
    if math.isnan(value) or value < 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
    return -1 if math.isinf(value) else value
