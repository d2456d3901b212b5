/* A queue of fixed-size slots in one named block of a region's arena: a header, then
 * `slots` slots, each a header of its own followed by `slot_size` bytes (rounded up to 64).
 * Every state change happens under the queue's lock word and is one or two stores, so a
 * holder killed anywhere leaves a state the rules in _queue.pyx read sensibly. */
#ifndef MSHARE_QUEUE_H
#define MSHARE_QUEUE_H

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
    uint64_t item_sleepers; /* threads asleep on filled, so a wake is worth a call */
    uint64_t room_sleepers; /* threads asleep on emptied */
    uint64_t reserved;
} ms_queue_header_t;

/* What describes a slot's item: what a producer writes in one copy and a reader checks. */
typedef struct {
    uint64_t nbytes;
    uint64_t ndim;
    char dtype[MS_DTYPE_BYTES];
    uint64_t shape[MS_MAX_DIMS];
} ms_queue_item_t;

typedef struct {
    uint64_t state;
    uint64_t owner;    /* lock word of the thread writing or reading the slot */
    uint64_t position; /* the tail value the slot was handed out for */
    ms_queue_item_t item;
    uint64_t reserved[7];
} ms_queue_slot_t;

/* Move a futex half on and wake one of its sleepers, if their count says there are any.
 * One, not all: an item (or a freed slot) is for one waiter, and waking the rest would
 * only have them fight for the lock and sleep again. A waiter that leaves without claiming,
 * or claims while more is there, passes a wake on (_queue.pyx), so nobody sleeps through
 * an item. Both sides are sequentially consistent: either the notifier sees the sleeper
 * counted, or the sleeper's FUTEX_WAIT sees the word moved. A writer's garbage in a count
 * costs a wasted wake, or a sleeper its recheck interval: never a lost item. */
static inline void ms_queue_notify(uint64_t *word, uint64_t *sleepers) {
    __atomic_fetch_add(ms_futex_half(word), 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(sleepers, __ATOMIC_SEQ_CST))
        ms_futex_wake(word, 1);
}

static inline void ms_queue_count_sleeper(uint64_t *sleepers, int64_t change) {
    __atomic_fetch_add(sleepers, (uint64_t)change, __ATOMIC_SEQ_CST);
}

_Static_assert(sizeof(ms_queue_header_t) == 64, "queue header layout changed");
_Static_assert(sizeof(ms_queue_item_t) == 112, "queue item layout changed");
_Static_assert(sizeof(ms_queue_slot_t) == 192, "queue slot layout changed");

#endif
