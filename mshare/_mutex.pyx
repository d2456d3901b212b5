# cython: language_level=3, embedsignature=True
"""Robust process-shared mutexes: set-up, an interruptible timed wait, errors.

Every mutex here is ``PTHREAD_PROCESS_SHARED`` (it lives in shared memory),
``PTHREAD_MUTEX_ROBUST`` (a holder's death is reported to the next taker instead of
leaving the mutex held forever) and ``PTHREAD_MUTEX_ERRORCHECK`` (relocking from the
holding thread, or unlocking from another, is an error instead of a deadlock).
"""

from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EBUSY, EPERM, ETIMEDOUT
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import errno
import math
import os

from mshare._layout cimport (
    EDEADLK, ENOTRECOVERABLE, PTHREAD_MUTEX_ERRORCHECK, PTHREAD_MUTEX_ROBUST,
    PTHREAD_PROCESS_SHARED, pthread_mutex_clocklock, pthread_mutex_init, pthread_mutex_t,
    pthread_mutex_trylock, pthread_mutexattr_destroy, pthread_mutexattr_init,
    pthread_mutexattr_setpshared, pthread_mutexattr_setrobust, pthread_mutexattr_settype,
    pthread_mutexattr_t,
)

from mshare.errors import CorruptBookkeepingError

# A blocked waiter wakes this often (seconds) to run signal handlers, so Ctrl-C works.
cdef double WAIT_SLICE = 0.05


cdef double monotonic() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


cdef int wait_for(pthread_mutex_t *mutex, double timeout) except? -1:
    """Take ``mutex`` within ``timeout`` seconds (negative: forever); return a pthread code.

    The uncontended case is one trylock with the GIL held; waiting happens with the GIL
    released, in slices, with signal handlers run between them."""
    cdef int rc = pthread_mutex_trylock(mutex)
    cdef double deadline, step, now
    cdef timespec until
    if rc != EBUSY:
        return rc
    deadline = monotonic() + timeout
    while True:
        now = monotonic()
        step = WAIT_SLICE
        if timeout >= 0:
            if now >= deadline:
                return ETIMEDOUT
            step = min(step, deadline - now)
        now += step
        until.tv_sec = <long>now
        until.tv_nsec = <long>((now - until.tv_sec) * 1e9)
        with nogil:
            rc = pthread_mutex_clocklock(mutex, CLOCK_MONOTONIC, &until)
        if rc != ETIMEDOUT:
            return rc
        PyErr_CheckSignals()


cdef lock_error(int rc, str what, double timeout, object name):
    if rc == ETIMEDOUT or rc == EBUSY:
        return TimeoutError(errno.ETIMEDOUT, f"timed out after {timeout} s waiting for {what}", name)
    if rc == EDEADLK:
        return RuntimeError(f"this thread already holds {what}; it is not re-entrant")
    if rc == EPERM:
        return RuntimeError(f"{what} is not held by this thread")
    if rc == ENOTRECOVERABLE:
        return CorruptBookkeepingError(f"{what} was left unrecoverable", name)
    return OSError(rc, os.strerror(rc), name)


cdef int init_mutex(pthread_mutex_t *mutex) except -1:
    cdef pthread_mutexattr_t attr
    cdef int rc = pthread_mutexattr_init(&attr)
    if rc == 0:
        rc = (pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)
              or pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)
              or pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK)
              or pthread_mutex_init(mutex, &attr))
        pthread_mutexattr_destroy(&attr)
    if rc:
        raise OSError(rc, f"cannot set up a robust process-shared mutex: {os.strerror(rc)}")
    return 0


cdef double timeout_seconds(object timeout) except? -2:
    """None (wait forever) becomes -1; anything else must be a number of seconds >= 0."""
    if timeout is None:
        return -1
    value = float(timeout)
    if math.isnan(value) or value < 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
    return -1 if math.isinf(value) else value
