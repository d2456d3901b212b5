# cython: language_level=3
"""Region locks on a futex word (``_futex.h``), for ``_shared``."""

from libc.stdint cimport uint32_t, uint64_t


cdef extern from "_futex.h" nogil:
    uint64_t MS_LOCK_WAITERS
    uint64_t MS_LOCK_TID_MASK
    enum ms_lock_outcome:
        MS_LOCK_TAKEN
        MS_LOCK_OWNER_DIED
        MS_LOCK_TIMED_OUT
        MS_LOCK_CLOSED
        MS_LOCK_DEADLOCK
    uint64_t ms_self_word()
    int ms_holder_alive(uint64_t word)
    int ms_lock_swap(uint64_t *word, uint64_t *expected, uint64_t desired)
    int ms_lock_spin(uint64_t *word, uint64_t me)
    uint64_t ms_lock_peek(uint64_t *word)
    uint64_t ms_lock_release(uint64_t *word)
    void ms_futex_wake(uint64_t *word, int count)


cdef uint64_t self_word() except 0
cdef int wait_for(uint64_t *word, uint64_t me, uint64_t observed, double timeout,
                  const bint *closing) except -1
cdef double timeout_seconds(object timeout) except? -2
cdef double monotonic() noexcept nogil
