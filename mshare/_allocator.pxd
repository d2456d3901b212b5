# cython: language_level=3
"""The shared allocator's entry points, used by ``_shared``. All expect the internal lock held."""

from libc.stdint cimport uint64_t

from mshare._layout cimport ms_bookkeeping_t

cdef uint64_t allocate(ms_bookkeeping_t *bk, uint64_t nbytes, uint64_t align,
                       uint64_t *intent, bint named, object name) except 0
cdef int release(ms_bookkeeping_t *bk, uint64_t payload, bint named, object name) except -1
cdef uint64_t used_block(ms_bookkeeping_t *bk, uint64_t payload) noexcept
cdef uint64_t live_block(ms_bookkeeping_t *bk, uint64_t payload) noexcept
cdef int rebuild(ms_bookkeeping_t *bk, object name) except -1
cdef dict verify_allocator(ms_bookkeeping_t *bk, object name)
