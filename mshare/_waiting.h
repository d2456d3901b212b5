/* Words that processes wait on inside a region: events and conditions. Each is the futex
 * half of one 64-bit word at the start of a named block (see _futex.h for the futex calls).
 * Any value is legal in them: a writer's garbage can make a waiter wake early or wait until
 * its timeout, never make anyone read or write elsewhere. */
#ifndef MSHARE_WAITING_H
#define MSHARE_WAITING_H

#include <limits.h>
#include <stdint.h>

#include "_futex.h"

/* An event's futex half: bit 0 is set/clear, the bits above count the sets, so a waiter that
 * saw it clear can tell it was set meanwhile even if it is clear again. */
#define MS_EVENT_SET 1u

/* A compare-and-swap loop gives up after this many changes by others: only a writer
 * scribbling on the word changes it that often. */
#define MS_WORD_RETRIES 10000

static inline uint32_t ms_word_peek(uint64_t *word) {
    return __atomic_load_n(ms_futex_half(word), __ATOMIC_ACQUIRE);
}

/* Set the event and wake every waiter: 1 if it was clear, 0 if it was set, -1 if the word
 * kept changing under every try. */
static int ms_event_set(uint64_t *word) {
    uint32_t *half = ms_futex_half(word);
    uint32_t old = __atomic_load_n(half, __ATOMIC_RELAXED);
    int tries;
    for (tries = 0; tries < MS_WORD_RETRIES; tries++) {
        if (old & MS_EVENT_SET)
            return 0;
        if (__atomic_compare_exchange_n(half, &old, (old + 2) | MS_EVENT_SET, 0,
                                        __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
            ms_futex_wake(word, INT_MAX);
            return 1;
        }
    }
    return -1;
}

/* Clear the event, keeping its count of sets: 0 done, -1 if the word kept changing. */
static int ms_event_clear(uint64_t *word) {
    uint32_t *half = ms_futex_half(word);
    uint32_t old = __atomic_load_n(half, __ATOMIC_RELAXED);
    int tries;
    for (tries = 0; tries < MS_WORD_RETRIES; tries++) {
        if (!(old & MS_EVENT_SET))
            return 0;
        if (__atomic_compare_exchange_n(half, &old, old & ~MS_EVENT_SET, 0, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED))
            return 0;
    }
    return -1;
}

/* A condition's futex half is a sequence: a notify moves it on and wakes `count` sleepers. */
static inline void ms_condition_notify(uint64_t *word, int count) {
    __atomic_fetch_add(ms_futex_half(word), 1, __ATOMIC_RELEASE);
    ms_futex_wake(word, count);
}

#endif
