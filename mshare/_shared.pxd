# cython: language_level=3
"""A region's lock and bookkeeping (``_shared``), for the objects that wait on its words."""

from libc.stdint cimport uint64_t

from mshare._allocator cimport Arena
from mshare._layout cimport ms_bookkeeping_t


cdef class RegionLock:
    cdef Bookkeeping owner
    cdef double timeout
    cdef object bound_to  # a _BoundTo once keep_bound_methods() ran
    cdef object kept_enter, kept_exit

    cdef void keep_bound_methods(self)


cdef class Bookkeeping:
    cdef Arena arena
    cdef readonly uint64_t bookkeeping_addr
    cdef readonly object name
    cdef object keepalive
    cdef bint header_checked
    cdef bint closing
    cdef Py_ssize_t in_flight  # calls of this process's threads now using the memory
    cdef uint64_t held_by      # lock word of this process's thread holding the user lock
    cdef object __weakref__

    cdef bint holds_lock(self)
    cdef void hold(self, uint64_t me) noexcept
    cdef void drop_hold(self)
    cdef str closed_message(self)
    cdef ms_bookkeeping_t *usable(self) except NULL
    cdef int check_header(self, ms_bookkeeping_t *bk) except -1
    cdef ms_bookkeeping_t *enter(self) except NULL
    cdef void leave(self) noexcept
    cdef int acquire_user(self, double timeout) except -1
    cdef int wait_user(self, ms_bookkeeping_t *bk, uint64_t me, uint64_t observed,
                       double timeout) except -1
    cdef int release_user(self) except -1
    cdef ms_bookkeeping_t *begin(self) except NULL
    cdef int take_internal(self, ms_bookkeeping_t *bk) except -1
    cdef void end(self, ms_bookkeeping_t *bk, bint clean) noexcept
    cdef int repair(self, ms_bookkeeping_t *bk) except -1
    cdef int find_slot(self, ms_bookkeeping_t *bk, bytes name) noexcept
    cdef object look_up(self, ms_bookkeeping_t *bk, bytes key, object name)
