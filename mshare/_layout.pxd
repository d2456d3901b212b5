# cython: language_level=3
"""Declarations of the bookkeeping area (``_layout.h``)."""

from libc.stdint cimport uint32_t, uint64_t


cdef extern from "_layout.h" nogil:
    uint64_t MS_MAGIC
    uint32_t MS_VERSION
    uint32_t MS_BOOKKEEPING_SIZE
    uint64_t MS_GRAIN
    uint64_t MS_HEADER
    uint64_t MS_MIN_BLOCK
    unsigned MS_SL_LOG2
    unsigned MS_SL_COUNT
    unsigned MS_FL_COUNT
    uint64_t MS_SMALL_LIMIT
    uint64_t MS_USED
    uint64_t MS_PREV_FREE
    uint64_t MS_NAMED
    uint64_t MS_FLAGS
    unsigned MS_NAME_CAPACITY
    unsigned MS_NAME_BYTES
    unsigned MS_DTYPE_BYTES
    unsigned MS_MAX_DIMS
    size_t MS_USER_LOCK_OFFSET
    size_t MS_INTERNAL_LOCK_OFFSET

    enum ms_slot_state:
        MS_SLOT_EMPTY
        MS_SLOT_CREATING
        MS_SLOT_LIVE
        MS_SLOT_DELETING

    ctypedef struct ms_slot_t:
        uint32_t seq
        uint32_t state
        uint32_t name_hash
        uint32_t ndim
        uint64_t addr
        uint64_t nbytes
        char name[64]
        char dtype[32]
        uint64_t shape[8]

    ctypedef struct ms_bookkeeping_t:
        uint64_t magic
        uint32_t version
        uint32_t layout_size
        uint64_t arena_addr
        uint64_t arena_size
        uint64_t block_key
        uint64_t user_lock
        uint64_t internal_lock
        uint64_t busy
        uint64_t pending_alloc
        uint64_t pending_free
        uint64_t formatted
        uint64_t repairs
        uint64_t free_bytes
        uint64_t fl_bitmap
        uint32_t sl_bitmap[64]
        uint64_t heads[64][16]
        ms_slot_t slots[256]

    uint64_t ms_load(const uint64_t *p)
    void ms_store(uint64_t *p, uint64_t v)
    uint64_t ms_peek(const uint64_t *p)
    uint32_t ms_peek32(const uint32_t *p)
    uint32_t ms_load32(const uint32_t *p)
    void ms_store32(uint32_t *p, uint32_t v)
    void ms_fence()
    unsigned ms_msb64(uint64_t x)
    unsigned ms_ctz64(uint64_t x)
    unsigned ms_ctz32(uint32_t x)
    uint64_t ms_mix(uint64_t x)
