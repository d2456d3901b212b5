/* The lock word: what a region lock stores in shared memory, and the system calls around it.
 *
 * A lock is one 64-bit word, 0 when free. A holder stores its own identity there:
 *   bits  0-30  the holder's thread id (Linux caps ids at 2^22)
 *   bit   31    WAITERS: someone may sleep on the word, so a release must wake it
 *   bits 32-63  the low 32 bits of the holder thread's start time (clock ticks since boot,
 *               field 22 of /proc/TID/stat), which a later thread reusing the id does not have
 * The futex is the word's low half, the half that holds the id and the WAITERS bit, so a
 * waiter that saw one holder never sleeps through the release of another.
 * Nothing here follows a pointer read from the word: its value is only compared, and the
 * id in it only names a /proc file to read. */
#ifndef MSHARE_FUTEX_H
#define MSHARE_FUTEX_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MS_LOCK_WAITERS 0x80000000ull
#define MS_LOCK_TID_MASK 0x7fffffffull

/* Outcomes of a wait; errors that need Python (signals) are raised by the caller. */
enum ms_lock_outcome {
    MS_LOCK_TAKEN = 0, MS_LOCK_OWNER_DIED = 1, MS_LOCK_TIMED_OUT = 2, MS_LOCK_CLOSED = 3,
    MS_LOCK_DEADLOCK = 4
};

static inline uint32_t *ms_futex_half(uint64_t *word) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (uint32_t *)word;
#else
    return (uint32_t *)word + 1;
#endif
}

/* State (field 3) and start time (field 22) of a task from its /proc stat file.
 * 0 on success, ENOENT when there is no such task, another errno when it cannot be told. */
static int ms_task_stat(const char *path, char *state, uint64_t *start_time) {
    char text[1024];
    char *cursor, *end;
    ssize_t length;
    int field, fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ESRCH ? ENOENT : errno;
    do
        length = read(fd, text, sizeof text - 1);
    while (length < 0 && errno == EINTR);
    field = errno;
    close(fd);
    if (length < 0)
        return field == ESRCH ? ENOENT : field;
    text[length] = 0;
    /* The command name (field 2) is in parentheses and may hold spaces and parentheses. */
    cursor = strrchr(text, ')');
    if (cursor == NULL || cursor[1] != ' ')
        return EPROTO;
    cursor += 2;
    *state = *cursor;
    for (field = 3; field < 22; field++) {
        cursor = strchr(cursor, ' ');
        if (cursor == NULL)
            return EPROTO;
        cursor++;
    }
    *start_time = strtoull(cursor, &end, 10);
    return end == cursor ? EPROTO : 0;
}

/* This thread's lock word, read from /proc once per thread and cached; 0 if /proc cannot
 * tell (then the caller raises). A forked child's thread is a new thread, so a fork handler
 * clears the cache. Every module that includes this header has a cache and a handler of its
 * own. */
static __thread uint64_t ms_thread_word;

static void ms_forget_thread(void) { ms_thread_word = 0; }

__attribute__((constructor)) static void ms_register_fork_handler(void) {
    pthread_atfork(NULL, NULL, ms_forget_thread);
}

static uint64_t ms_compute_thread_word(void) {
    char path[64], state;
    uint64_t start_time;
    long tid = syscall(SYS_gettid);
    snprintf(path, sizeof path, "/proc/self/task/%ld/stat", tid);
    if (tid <= 0 || (uint64_t)tid > MS_LOCK_TID_MASK || ms_task_stat(path, &state, &start_time))
        return 0;
    ms_thread_word = (start_time << 32) | (uint64_t)tid;
    return ms_thread_word;
}

static inline uint64_t ms_self_word(void) {
    uint64_t word = ms_thread_word;
    return word ? word : ms_compute_thread_word();
}

/* 0 if the holder a lock word names is dead (no such task, a zombie, or a task with another
 * start time: its id was reused) or never existed; 1 if it lives or /proc cannot tell. */
static int ms_holder_alive(uint64_t word) {
    char path[64], state;
    uint64_t start_time;
    uint64_t tid = word & MS_LOCK_TID_MASK;
    int err;
    if (tid == 0)
        return 0;
    snprintf(path, sizeof path, "/proc/%u/stat", (unsigned)tid);
    err = ms_task_stat(path, &state, &start_time);
    if (err == ENOENT)
        return 0;
    if (err)
        return 1;
    if (state == 'Z' || state == 'X' || state == 'x')
        return 0;
    return (uint32_t)start_time == (uint32_t)(word >> 32);
}

static inline uint64_t ms_lock_peek(uint64_t *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

/* One compare-and-swap: 1 if *word was `expected` and now is `desired`; otherwise 0 and
 * `expected` receives what the word held. */
static inline int ms_lock_swap(uint64_t *word, uint64_t *expected, uint64_t desired) {
    return __atomic_compare_exchange_n(word, expected, desired, 0, __ATOMIC_ACQUIRE,
                                       __ATOMIC_RELAXED);
}

/* Before sleeping, try a held lock again for a moment: a holder running on another core
 * usually releases within a microsecond, much sooner than a futex sleep and wake-up take.
 * Only loads and, when the word reads free, one compare-and-swap: 1 if now held by `me`. */
#define MS_LOCK_SPINS 64

static inline void ms_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int ms_lock_spin(uint64_t *word, uint64_t me) {
    uint64_t observed;
    int spin;
    for (spin = 0; spin < MS_LOCK_SPINS; spin++) {
        observed = __atomic_load_n(word, __ATOMIC_RELAXED);
        if (observed == 0 && ms_lock_swap(word, &observed, me))
            return 1;
        ms_cpu_relax();
    }
    return 0;
}

/* Sleep while the futex half still reads `expected`, at most `nanoseconds`: 0 when woken,
 * else ETIMEDOUT, EAGAIN (it changed before sleeping) or EINTR (a signal). */
static int ms_futex_wait(uint64_t *word, uint32_t expected, long nanoseconds) {
    struct timespec span;
    span.tv_sec = nanoseconds / 1000000000L;
    span.tv_nsec = nanoseconds % 1000000000L;
    if (syscall(SYS_futex, ms_futex_half(word), FUTEX_WAIT, expected, &span, NULL, 0) == 0)
        return 0;
    return errno;
}

static inline void ms_futex_wake(uint64_t *word, int count) {
    syscall(SYS_futex, ms_futex_half(word), FUTEX_WAKE, count, NULL, NULL, 0);
}

/* Release: one exchange, and a wake only if the WAITERS bit was set. Returns the old word. */
static inline uint64_t ms_lock_release(uint64_t *word) {
    uint64_t old = __atomic_exchange_n(word, 0, __ATOMIC_RELEASE);
    if (old & MS_LOCK_WAITERS)
        ms_futex_wake(word, 1);
    return old;
}

#endif
