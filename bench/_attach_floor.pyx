# cython: language_level=3
"""The system calls of mshare's attach of a region on /dev/shm not mapped in this process,
in its order and with its flags (tests/test_attach_cost.py lists them), and nothing else:
no parse, no check of what they return beyond success, no Python object per call."""

from libc.errno cimport errno
from libc.stdint cimport uintptr_t
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.stat cimport fstat, struct_stat
from posix.unistd cimport close, read


cdef extern from "<fcntl.h>" nogil:
    int openat(int directory, const char *path, int flags)
    int fstatat(int directory, const char *path, struct_stat *buf, int flags)
    int AT_FDCWD, AT_SYMLINK_NOFOLLOW
    int O_RDONLY, O_RDWR, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK, O_CLOEXEC

cdef extern from "<sys/file.h>" nogil:
    int flock(int fd, int operation)
    int LOCK_SH, LOCK_NB

cdef extern from "<sys/mman.h>" nogil:
    int MAP_FIXED_NOREPLACE

cdef enum:
    ENTRY_BYTES = 4096


cdef int _fail(int first, int second, int third) noexcept:
    """Close what is open and give back the errno of the call that failed."""
    cdef int failed = errno
    if first >= 0:
        close(first)
    if second >= 0:
        close(second)
    if third >= 0:
        close(third)
    return failed


def attach(bytes registry, bytes entry, bytes data, bytes range_file, uintptr_t address,
           size_t length):
    """Make the attach's fifteen system calls; return the attach mark's descriptor, with
    the data mapped at ``address`` (``detach`` undoes both). Any failing call raises."""
    cdef struct_stat status
    cdef char contents[ENTRY_BYTES]
    cdef int directory = -1, entry_fd = -1, data_fd = -1, mark = -1, failed = 0
    cdef const char *entry_path = entry
    cdef const char *data_path = data
    cdef const char *range_path = range_file
    cdef const char *registry_path = registry
    cdef void *mapped
    directory = openat(AT_FDCWD, registry_path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_DIRECTORY)
    if directory < 0 or fstat(directory, &status) < 0:
        failed = _fail(directory, -1, -1)
    if not failed:
        entry_fd = openat(directory, entry_path, O_RDWR | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC)
        if (entry_fd < 0 or fstat(entry_fd, &status) < 0
                or read(entry_fd, contents, min(<size_t>status.st_size, ENTRY_BYTES)) < 0):
            failed = _fail(directory, entry_fd, -1)
        else:
            close(entry_fd)
    if not failed:
        data_fd = openat(AT_FDCWD, data_path, O_RDWR | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC)
        if data_fd < 0 or fstat(data_fd, &status) < 0:
            failed = _fail(directory, data_fd, -1)
    if not failed:
        mark = openat(directory, range_path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC)
        if (mark < 0 or fstat(mark, &status) < 0 or flock(mark, LOCK_SH | LOCK_NB) < 0
                or fstatat(AT_FDCWD, data_path, &status, AT_SYMLINK_NOFOLLOW) < 0):
            failed = _fail(directory, data_fd, mark)
    if not failed:
        mapped = mmap(<void *>address, length, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_FIXED_NOREPLACE, data_fd, 0)
        if mapped == MAP_FAILED:
            failed = _fail(directory, data_fd, mark)
        else:
            close(data_fd)
            close(directory)
    if failed:
        raise OSError(failed, "the attach floor's system calls failed")
    return mark


def detach(uintptr_t address, size_t length, int mark):
    """Undo ``attach``: unmap, and let go of the mark."""
    munmap(<void *>address, length)
    close(mark)
