/* The bookkeeping area at the tail of every region: its exact byte layout, shared by every
 * process that maps the region, and the few atomic operations the crash-safe write orders
 * need. Changing anything here changes the on-memory format: bump MS_VERSION. */
#ifndef MSHARE_LAYOUT_H
#define MSHARE_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#define MS_MAGIC 0x4b4f4f425248534dULL /* "MSHRBOOK" read as a little-endian u64 */
#define MS_VERSION 2u
#define MS_BOOKKEEPING_SIZE 65536u

/* Allocator: two-level segregated fit (TLSF). A size maps to a first-level class (its
 * highest bit) split into MS_SL_COUNT second-level classes, so finding a fitting free list
 * is two bit scans. */
#define MS_GRAIN 16u    /* block sizes and payloads are multiples of 16 bytes */
#define MS_HEADER 16u   /* word 0: size | flags, word 1: check word of a used block */
#define MS_MIN_BLOCK 48u /* header + two free-list links + footer, rounded to the grain */
#define MS_SL_LOG2 4
#define MS_SL_COUNT (1u << MS_SL_LOG2)
#define MS_FL_COUNT 64u
#define MS_SMALL_LIMIT (1u << (MS_SL_LOG2 + 4)) /* below this, classes are 16 bytes wide */

#define MS_USED 1ull      /* word 0 flag: the block is allocated */
#define MS_PREV_FREE 2ull /* word 0 flag: the physically previous block is free */
#define MS_NAMED 4ull     /* word 0 flag: a used block that a named object owns */
#define MS_FLAGS 15ull

/* Named-object table. */
#define MS_NAME_CAPACITY 256u
#define MS_NAME_BYTES 64u /* including the terminating NUL */
#define MS_DTYPE_BYTES 32u
#define MS_MAX_DIMS 8u

enum ms_slot_state { MS_SLOT_EMPTY = 0, MS_SLOT_CREATING = 1, MS_SLOT_LIVE = 2, MS_SLOT_DELETING = 3 };

typedef struct {
    uint32_t seq; /* odd while the slot changes; lock-free readers retry on a change */
    uint32_t state;
    uint32_t name_hash;
    uint32_t ndim;
    uint64_t addr; /* payload address; while CREATING, the block being allocated */
    uint64_t nbytes;
    char name[MS_NAME_BYTES];
    char dtype[MS_DTYPE_BYTES];
    uint64_t shape[MS_MAX_DIMS];
} ms_slot_t;

typedef struct {
    uint64_t magic; /* stored last by initialize(): a region is usable once it reads right */
    uint32_t version;
    uint32_t layout_size;
    uint64_t arena_addr;
    uint64_t arena_size;
    uint64_t block_key; /* random; mixed into check words so stray data never passes as a header */

    /* Each lock word (see _futex.h) on its own cache line: the user lock and the allocator
     * lock are independent. */
    uint64_t user_lock __attribute__((aligned(64)));
    uint64_t internal_lock __attribute__((aligned(64)));

    /* Everything below is guarded by internal_lock. */
    uint64_t busy __attribute__((aligned(64))); /* 1 while a holder mutates: set => it died mid-way */
    uint64_t pending_alloc; /* payload an interrupted alloc() may have committed: roll back */
    uint64_t pending_free;  /* payload an interrupted free() was releasing: roll forward */
    uint64_t formatted;     /* 0 until the first allocation writes the first block header */
    uint64_t repairs;       /* how often a holder's death had to be repaired, for diagnostics */
    uint64_t free_bytes;
    uint64_t fl_bitmap;
    uint32_t sl_bitmap[MS_FL_COUNT];
    uint64_t heads[MS_FL_COUNT][MS_SL_COUNT];
    ms_slot_t slots[MS_NAME_CAPACITY];
} ms_bookkeeping_t;

_Static_assert(sizeof(ms_slot_t) == 192, "named slot layout changed");
#define MS_USER_LOCK_OFFSET offsetof(ms_bookkeeping_t, user_lock)
#define MS_INTERNAL_LOCK_OFFSET offsetof(ms_bookkeeping_t, internal_lock)
_Static_assert(MS_USER_LOCK_OFFSET % 64 == 0 && MS_INTERNAL_LOCK_OFFSET % 64 == 0,
               "each lock word starts a cache line of its own");
_Static_assert(sizeof(ms_bookkeeping_t) <= MS_BOOKKEEPING_SIZE, "bookkeeping outgrew its area");

/* Commit points: a release store is never reordered before the writes that precede it, by
 * the compiler or the CPU, so a process killed at any instruction leaves either the old or
 * the new state behind the committing word. */
static inline uint64_t ms_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void ms_store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
/* Every other read of shared memory is one relaxed atomic load: the compiler may neither
 * tear it nor fetch it a second time from memory that another process rewrites. */
static inline uint64_t ms_peek(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint32_t ms_peek32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint32_t ms_load32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void ms_store32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void ms_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline unsigned ms_msb64(uint64_t x) { return 63u - (unsigned)__builtin_clzll(x); }
static inline unsigned ms_ctz64(uint64_t x) { return (unsigned)__builtin_ctzll(x); }
static inline unsigned ms_ctz32(uint32_t x) { return (unsigned)__builtin_ctz(x); }

/* splitmix64's finaliser: cheap, and every input bit affects every output bit. */
static inline uint64_t ms_mix(uint64_t x) {
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

#endif
