# cython: language_level=3
"""Sleeping on a futex word in a region (``_waiting``), for the queue."""

from libc.stdint cimport uint32_t, uint64_t

from mshare._shared cimport Bookkeeping


cdef int sleep_on(Bookkeeping owner, uint64_t *word, uint32_t observed, double deadline,
                  uint32_t *current, str what) except -1
cdef double deadline_of(object timeout) except? -2
