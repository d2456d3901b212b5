# cython: language_level=3
# System declarations used by the core. Constants that older C headers lack are defined
# with their Linux values; the kernel answers EINVAL or treats them as hints when it
# predates them, and the core checks for both.

from posix.types cimport off_t

cdef extern from *:
    """
    #include <sys/mman.h>
    #ifndef MAP_FIXED_NOREPLACE
    #define MAP_FIXED_NOREPLACE 0x100000
    #endif
    #ifndef MADV_POPULATE_READ
    #define MADV_POPULATE_READ 22
    #endif
    #ifndef MADV_POPULATE_WRITE
    #define MADV_POPULATE_WRITE 23
    #endif
    #ifndef MADV_HUGEPAGE
    #define MADV_HUGEPAGE 14
    #endif

    /* Fault in one byte per page. A relaxed atomic add of zero makes the page
       writable-present without changing its contents, even if another process
       writes the same byte at the same time. */
    static void touch_pages(char *start, char *end, size_t step, int for_write) {
        volatile char *cursor;
        for (cursor = start; cursor < end; cursor += step) {
            if (for_write)
                __atomic_fetch_add((char *)cursor, 0, __ATOMIC_RELAXED);
            else
                (void)*cursor;
        }
    }
    """
    int MAP_FIXED_NOREPLACE
    int MADV_POPULATE_READ
    int MADV_POPULATE_WRITE
    int MADV_HUGEPAGE
    void touch_pages(char *start, char *end, size_t step, int for_write) nogil

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
    void *MAP_FAILED
    int PROT_NONE
    int PROT_READ
    int PROT_WRITE
    int MAP_SHARED
    int MAP_PRIVATE
    int MAP_ANONYMOUS
    int MAP_FIXED

cdef extern from "<unistd.h>" nogil:
    long sysconf(int name)
    int _SC_PAGESIZE
