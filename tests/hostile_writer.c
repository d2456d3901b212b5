/* A hostile writer: maps a region's data object writable and rewrites its bookkeeping
 * (and the start of its arena) in a tight loop, with values chosen to hurt: garbage,
 * bit flips, small numbers, addresses inside the victim's private region and inside the
 * arena, lock words of dead and of live threads. Runs until SIGTERM, then prints how many
 * words it wrote.
 *
 * usage: hostile_writer PATH MAP_LENGTH DATA_LENGTH ARENA_SIZE REGION_ADDR PRIVATE_ADDR
 *                       TARGET SEED
 * TARGET: all, or one field class (see classes[] below). Built by the tests against the
 * installed mshare's _layout.h, so the offsets are the ones the victim uses. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "_layout.h"

#define BK(field) offsetof(ms_bookkeeping_t, field), sizeof(((ms_bookkeeping_t *)0)->field)

typedef struct { size_t offset, length; } span_t;
typedef struct { const char *name; span_t spans[6]; } field_class_t;

/* Offsets inside the bookkeeping area; the "blocks" class is the arena, handled apart. */
static const field_class_t classes[] = {
    {"header", {{BK(magic)}, {BK(version)}, {BK(layout_size)}, {BK(block_key)}}},
    {"arena-fields", {{BK(arena_addr)}, {BK(arena_size)}}},
    {"user-lock", {{BK(user_lock)}}},
    {"internal-lock", {{BK(internal_lock)}}},
    {"busy-pending", {{BK(busy)}, {BK(pending_alloc)}, {BK(pending_free)}, {BK(formatted)},
                      {BK(repairs)}, {BK(free_bytes)}}},
    {"free-lists", {{BK(heads)}}},
    {"bitmaps", {{BK(fl_bitmap)}, {BK(sl_bitmap)}}},
    {"name-slots", {{BK(slots)}}},
    {"slot-dtypes", {{BK(slots)}}},
    {"blocks", {{0, 0}}},
};
#define CLASS_COUNT (sizeof classes / sizeof classes[0])
#define BLOCKS (CLASS_COUNT - 1)
#define SLOT_DTYPES (CLASS_COUNT - 2)

/* Dtype texts on which numpy's parser kills or misleads a reader that trusts them: a
 * datetime unit divided by zero (SIGFPE), commas (ast.literal_eval), a zero multiplier,
 * Python objects. Written whole into a slot's dtype field. */
static const char *const poisoned_dtypes[] = {"M8[s/0]", "m8[1M/0]", ",V1V8", "<i8,<f8",
                                              "m8[0s]", "|O", "<i8"};
#define POISON_COUNT (sizeof poisoned_dtypes / sizeof poisoned_dtypes[0])

static volatile sig_atomic_t stopping;
static void stop(int signum) { (void)signum; stopping = 1; }

static uint64_t state;
static uint64_t next_random(void) { state = ms_mix(state + 0x9e3779b97f4a7c15ULL); return state; }

static uint64_t own_lock_word(void) {
    /* A live thread's identity, as the victim's liveness check would accept it. */
    char text[1024], *cursor;
    unsigned long long start_time = 0;
    int field, fd = open("/proc/thread-self/stat", O_RDONLY);
    ssize_t length = fd >= 0 ? read(fd, text, sizeof text - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (length > 0) {
        text[length] = 0;
        cursor = strrchr(text, ')');
        for (field = 2; cursor && field < 22; field++)
            cursor = strchr(cursor + 1, ' ');
        if (cursor)
            start_time = strtoull(cursor + 1, NULL, 10);
    }
    return (uint64_t)start_time << 32 | (uint64_t)syscall(SYS_gettid);
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s PATH MAP_LENGTH DATA_LENGTH ARENA_SIZE REGION_ADDR "
                        "PRIVATE_ADDR TARGET SEED\n", argv[0]);
        return 2;
    }
    size_t map_length = strtoull(argv[2], NULL, 0), data_length = strtoull(argv[3], NULL, 0);
    size_t arena_size = strtoull(argv[4], NULL, 0);
    uint64_t region_addr = strtoull(argv[5], NULL, 0), private_addr = strtoull(argv[6], NULL, 0);
    const char *target = argv[7];
    state = strtoull(argv[8], NULL, 0);
    int chosen = -1;
    for (size_t i = 0; i < CLASS_COUNT; i++)
        if (strcmp(target, classes[i].name) == 0)
            chosen = (int)i;
    if (chosen < 0 && strcmp(target, "all") != 0) {
        fprintf(stderr, "unknown target %s\n", target);
        return 2;
    }
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) {
        perror(argv[1]);
        return 2;
    }
    unsigned char *base = mmap(NULL, map_length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    unsigned char *bookkeeping = base + data_length;
    /* The allocator works at the arena's start: aim there. */
    size_t arena_aimed = arena_size < (256u << 10) ? arena_size : (256u << 10);
    uint64_t alive = own_lock_word(), writes = 0, bursts = 0;
    signal(SIGTERM, stop);

    while (!stopping) {
        uint64_t burst = next_random() % 256 + 1;
        for (uint64_t n = 0; n < burst; n++) {
            size_t which = chosen >= 0 ? (size_t)chosen : next_random() % CLASS_COUNT;
            unsigned char *at;
            size_t width = 8;
            if (which == SLOT_DTYPES) {
                ms_slot_t *slot = &((ms_bookkeeping_t *)bookkeeping)->slots[
                    next_random() % MS_NAME_CAPACITY];
                const char *poison = poisoned_dtypes[next_random() % POISON_COUNT];
                memcpy((char *)slot->dtype, poison, strlen(poison) + 1);
                writes++;
                continue;
            }
            if (which == BLOCKS) {
                if (arena_aimed < 8)
                    continue;
                at = base + (next_random() % (arena_aimed / 8)) * 8;
            } else {
                const field_class_t *cls = &classes[which];
                size_t count = 0, pick, offset;
                while (count < 6 && cls->spans[count].length)
                    count++;
                pick = next_random() % count;
                offset = cls->spans[pick].offset;
                if (cls->spans[pick].length < 8)
                    width = cls->spans[pick].length;
                offset += (next_random() % (cls->spans[pick].length / width)) * width;
                at = bookkeeping + offset;
            }
            uint64_t current = width == 8 ? __atomic_load_n((uint64_t *)at, __ATOMIC_RELAXED)
                                          : __atomic_load_n((uint32_t *)at, __ATOMIC_RELAXED);
            uint64_t value;
            switch (next_random() % 10) {
            case 0: value = next_random(); break;
            case 1: value = 0; break;
            case 2: value = ~0ull; break;
            case 3: value = next_random() % 4096; break;
            case 4: value = current ^ (1ull << (next_random() % 64)); break;
            case 5: value = (private_addr + next_random() % 65536) & ~7ull; break;
            case 6: value = (region_addr + next_random() % (map_length + 4096)) & ~15ull; break;
            case 7: value = (next_random() << 32) | (next_random() % 32768 + 1); break;
            case 8: value = current + (next_random() % 8192) - 4096; break;
            default: value = alive; break;
            }
            if (width == 8)
                __atomic_store_n((uint64_t *)at, value, __ATOMIC_RELAXED);
            else
                __atomic_store_n((uint32_t *)at, (uint32_t)value, __ATOMIC_RELAXED);
            writes++;
        }
        bursts++;
        /* A pause of random length, so the victim sees both storms and calm. */
        for (volatile uint64_t spin = next_random() % 20000; spin; spin--)
            ;
    }
    printf("{\"writes\": %llu, \"bursts\": %llu}\n", (unsigned long long)writes,
           (unsigned long long)bursts);
    return 0;
}
