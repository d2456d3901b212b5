# cython: language_level=3
"""The shared allocator's entry points, used by ``_shared``. All expect the internal lock held.

Every function works from an ``Arena``: process-private bounds taken from this process's
own mapping, never from the shared header, so a writer of the region cannot move them."""

from libc.stdint cimport uint64_t

from mshare._layout cimport ms_bookkeeping_t


ctypedef struct Arena:
    ms_bookkeeping_t *bk  # this process's mapping of the bookkeeping area
    uint64_t start        # first byte of the arena
    uint64_t end          # end of the part blocks tile (the size rounded down to the grain)
    uint64_t size         # the arena's size, as the region's creator asked
    uint64_t key          # the block key, read once when the header was checked


cdef uint64_t allocate(Arena *arena, uint64_t nbytes, uint64_t align, uint64_t *intent,
                       bint named, object name) except 0
cdef int release(Arena *arena, uint64_t payload, bint named, object name) except -1
cdef uint64_t used_block(Arena *arena, uint64_t payload, uint64_t *head) noexcept
cdef uint64_t live_block(Arena *arena, uint64_t payload) noexcept
cdef int rebuild(Arena *arena, object name) except -1
cdef dict verify_allocator(Arena *arena, object name)
