/* A queue of fixed-size slots in one named block of a region's arena: a header, then
 * `slots` slots, each a header of its own followed by `slot_size` bytes (rounded up to 64).
 * Every state change happens under the queue's lock word and is one or two stores, so a
 * holder killed anywhere leaves a state the rules in _queue.pyx read sensibly. */
#ifndef MSHARE_QUEUE_H
#define MSHARE_QUEUE_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "_futex.h"
#include "_layout.h"

enum ms_queue_state {
    MS_QUEUE_FREE = 0, MS_QUEUE_WRITING = 1, MS_QUEUE_READY = 2, MS_QUEUE_READING = 3
};

typedef struct {
    uint64_t lock;    /* a lock word (_futex.h) over head, tail and every slot's state */
    uint64_t filled;  /* futex half: a sequence moved on by every publish */
    uint64_t emptied; /* futex half: a sequence moved on by every slot freed */
    uint64_t head;    /* positions handed to consumers so far */
    uint64_t tail;    /* positions handed to producers so far */
    uint64_t sleepers; /* threads asleep on filled or emptied, so a wake is worth a call */
    uint64_t reserved[2];
} ms_queue_header_t;

typedef struct {
    uint64_t state;
    uint64_t owner;    /* lock word of the thread writing or reading the slot */
    uint64_t position; /* the tail value the slot was handed out for */
    uint64_t nbytes;
    uint64_t ndim;
    char dtype[MS_DTYPE_BYTES];
    uint64_t shape[MS_MAX_DIMS];
    uint64_t reserved[7];
} ms_queue_slot_t;

/* Move a futex half on and wake its sleepers, if the count says there are any. Both sides
 * are sequentially consistent: either the notifier sees the sleeper counted, or the
 * sleeper's FUTEX_WAIT sees the word moved. A writer's garbage in the count costs a wasted
 * wake, or a sleeper its recheck interval: never a lost item. */
static inline void ms_queue_notify(ms_queue_header_t *header, uint64_t *word) {
    __atomic_fetch_add(ms_futex_half(word), 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&header->sleepers, __ATOMIC_SEQ_CST))
        ms_futex_wake(word, INT_MAX);
}

static inline void ms_queue_count_sleeper(ms_queue_header_t *header, int64_t change) {
    __atomic_fetch_add(&header->sleepers, (uint64_t)change, __ATOMIC_SEQ_CST);
}

/* The fields that describe a slot's item (nbytes to shape): what a reader checks. */
#define MS_QUEUE_ITEM_HEADER_BYTES \
    (offsetof(ms_queue_slot_t, reserved) - offsetof(ms_queue_slot_t, nbytes))

_Static_assert(sizeof(ms_queue_header_t) == 64, "queue header layout changed");
_Static_assert(sizeof(ms_queue_slot_t) == 192, "queue slot layout changed");

#endif
