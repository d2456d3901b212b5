# cython: language_level=3, embedsignature=True
"""The C-speed core: maps shared memory at fixed addresses, populates it, exports it
as buffers, and turns failed system calls into exceptions.

Nothing here knows about region names or the registry; callers pass file descriptors,
addresses and lengths.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EEXIST, EINTR, EINVAL, ENOENT, errno
from libc.signal cimport SIGKILL
from libc.stdint cimport uintptr_t
from libc.string cimport memcmp, strerror
from posix.stat cimport S_ISREG, S_ISVTX, fstat, lstat, struct_stat
from posix.signal cimport kill
from posix.types cimport dev_t, gid_t, ino_t, mode_t, off_t, uid_t
from posix.unistd cimport close as close_descriptor, geteuid, getpid, read, usleep

from mshare._system cimport *

cdef extern from "<fcntl.h>" nogil:
    int openat(int dirfd, const char *path, int flags, ...)
    int AT_FDCWD
    int O_RDONLY
    int O_DIRECTORY
    int O_NOFOLLOW
    int O_CLOEXEC

cdef extern from "<sys/file.h>" nogil:
    int flock(int fd, int operation)
    int LOCK_SH
    int LOCK_NB

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long count, int timeout)
    short POLLPRI

cdef extern from "<unistd.h>" nogil:
    ssize_t readlink(const char *path, char *buffer, size_t size)

cdef extern from "Python.h":
    ctypedef struct PyObject
    int PySys_Audit(const char *event, const char *format, ...) except -1
    bytes PyUnicode_EncodeFSDefault(object unicode)

import os

from mshare.errors import AddressConflictError
from mshare.procmaps import describe_occupant

PAGE_SIZE = sysconf(_SC_PAGESIZE)


cdef raise_errno(int err, object filename=None):
    """Raise the OSError subclass for ``err`` (FileExistsError, PermissionError, ...)."""
    raise OSError(err, strerror(err).decode("utf-8", "replace"), filename)


cdef class Mapping:
    """One ``MAP_SHARED`` mapping at a fixed address, unmapped exactly once.

    ``exports`` counts live buffer views (memoryviews, numpy arrays); ``unmap`` refuses
    while any exist, so no Python object can ever point at unmapped memory. ``populate``
    runs with the GIL released; ``unmap`` waits for every populate in flight, and refuses
    new ones from the moment it starts.
    """

    cdef readonly uintptr_t addr
    cdef readonly size_t length
    cdef readonly bint writable
    cdef readonly Py_ssize_t exports
    cdef readonly bint mapped
    cdef public object label
    cdef bint closing
    cdef readonly Py_ssize_t populating  # populate calls now running, the GIL released

    def __cinit__(self):
        self.addr = 0
        self.length = 0
        self.writable = False
        self.exports = 0
        self.mapped = False
        self.label = None
        self.closing = False
        self.populating = 0

    @staticmethod
    def map_fixed(int fd, uintptr_t addr, size_t length, bint writable, label=None):
        """Map ``length`` bytes of ``fd`` at exactly ``addr`` or raise.

        Uses ``MAP_FIXED_NOREPLACE`` and compares the result, so an existing mapping is
        never replaced (kernels before 4.17 treat the flag as a hint and may answer
        elsewhere; that mapping is undone and reported as a conflict).
        """
        cdef Mapping mapping = Mapping.__new__(Mapping)
        cdef int prot = PROT_READ | (PROT_WRITE if writable else 0)
        cdef void *result
        cdef int err
        with nogil:
            result = mmap(<void *>addr, length, prot, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
            err = errno
        if result == MAP_FAILED:
            if err == EEXIST:
                raise AddressConflictError(
                    f"address range {addr:#x}-{addr + length:#x} is already in use in this "
                    f"process by {describe_occupant(addr, addr + length)}",
                    label,
                )
            raise_errno(err, label)
        if <uintptr_t>result != addr:
            munmap(result, length)
            raise AddressConflictError(
                f"the kernel would not map at {addr:#x} (it offered {<uintptr_t>result:#x}); "
                f"occupied by {describe_occupant(addr, addr + length)}",
                label,
            )
        mapping.addr = addr
        mapping.length = length
        mapping.writable = writable
        mapping.mapped = True
        mapping.label = label
        return mapping

    def remap_writable(self, int fd):
        """Replace this mapping with a writable one of the same file at the same address.

        ``MAP_FIXED`` is safe here: the range is this object's own mapping of the same
        data, so every existing pointer and view stays valid.
        """
        cdef void *result
        cdef int err
        self._check_mapped()
        with nogil:
            result = mmap(<void *>self.addr, self.length, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_FIXED, fd, 0)
            err = errno
        if result == MAP_FAILED:
            raise_errno(err, self.label)
        self.writable = True

    def populate(self, size_t page_size, write=None):
        """Pre-fault every page so that first access costs nothing.

        Uses ``MADV_POPULATE_WRITE``/``READ`` (Linux 5.14+) with the GIL released and
        falls back to touching one byte per page where the kernel lacks them.
        """
        cdef bint for_write = self.writable if write is None else write
        self._check_mapped()
        if for_write and not self.writable:
            raise ValueError("cannot populate a read-only mapping for writing")
        self.populating += 1
        try:
            self._populate(page_size, for_write)
        finally:
            self.populating -= 1

    cdef _populate(self, size_t page_size, bint for_write):
        cdef int advice = MADV_POPULATE_WRITE if for_write else MADV_POPULATE_READ
        cdef int rc, err = 0
        while True:
            with nogil:
                rc = madvise(<void *>self.addr, self.length, advice)
                err = errno if rc != 0 else 0
            if rc == 0:
                return
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            break
        if err != EINVAL:
            raise_errno(err, self.label)
        with nogil:
            touch_pages(<char *>self.addr, <char *>(self.addr + self.length), page_size, for_write)

    def advise_hugepages(self):
        """Ask for transparent huge pages (``MADV_HUGEPAGE``) on this mapping."""
        self._check_mapped()
        if madvise(<void *>self.addr, self.length, MADV_HUGEPAGE) != 0:
            raise_errno(errno, self.label)

    def unmap(self):
        """Unmap now; ``BufferError`` while views of the memory are alive."""
        if not self.mapped:
            return
        if self.exports:
            raise BufferError(
                f"{self.exports} view(s) of {self.label or 'the region'} are still alive "
                "(memoryview slices or numpy arrays made from Region.buf / Region.ndarray); "
                "release them (del them or call .release()) before close()"
            )
        self.closing = True
        while self.populating:
            with nogil:
                usleep(1000)
        self._unmap()

    cdef void _unmap(self):
        if self.mapped:
            munmap(<void *>self.addr, self.length)
            self.mapped = False

    cdef _check_mapped(self):
        if not self.mapped or self.closing:
            raise ValueError(f"{self.label or 'the region'} is closed")

    def __dealloc__(self):
        # Views hold a reference to the mapping, so this runs only when none remain.
        self._unmap()


cdef class OwnedDescriptor:
    """Owns one file descriptor and closes it exactly once: on ``close()`` or when dropped.

    Closing holds the GIL (``select.epoll``, the standard owner of a raw descriptor,
    releases it around ``close``), so dropping an attachment lets no other thread in
    between the moment the attachment is gone from the table and its unmap.
    """

    cdef int fd

    def __cinit__(self, int fd):
        self.fd = fd

    @staticmethod
    def open(path, int flags, int mode=0o777, dir_fd=None):
        """``os.open`` whose descriptor is owned before any Python code runs: between the
        system call and the owner there is no bytecode boundary, so a signal handler
        (Ctrl-C) cannot lose it. ``EINTR`` is retried after the handlers ran. Raises the
        ``open`` audit event as ``os.open`` does, so audit hooks see every file opened."""
        return OwnedDescriptor(open_raw(path, flags, mode, AT_FDCWD if dir_fd is None else dir_fd))

    def fileno(self):
        return self.fd

    def close(self):
        cdef int fd = self.fd
        self.fd = -1
        if fd >= 0:
            close_descriptor(fd)

    def __dealloc__(self):
        if self.fd >= 0:
            close_descriptor(self.fd)


cdef bytes encoded_path(path):
    """``os.fsencode(path)``, without a call into Python code for a ``str``."""
    if type(path) is str:
        return PyUnicode_EncodeFSDefault(path)
    return os.fsencode(path)


cdef int open_raw(path, int flags, int mode, int directory) except -1:
    """``openat`` with the ``open`` audit event and ``EINTR`` retried; the caller owns
    the descriptor before any Python code can run."""
    PySys_Audit("open", "OOi", <PyObject *>path, <PyObject *>None, flags)
    cdef bytes encoded = encoded_path(path)
    cdef const char *c_path = encoded
    cdef int fd
    while True:
        fd = openat(directory, c_path, flags, mode)
        if fd >= 0:
            return fd
        if errno != EINTR:
            raise_errno(errno, path)
        PyErr_CheckSignals()


def read_whole(int dir_fd, path, int flags, Py_ssize_t limit):
    """Open ``path`` relative to ``dir_fd``, ``fstat`` it and read it, at most ``limit``
    bytes: ``(bytes, os.stat_result)``, or ``(None, os.stat_result)`` when it
    is not a regular file (nothing read). The descriptor exists only inside this call,
    closed in C whatever happens. A file read in full by the first ``read`` (its size
    from ``fstat``) costs no second ``read`` to see its end."""
    cdef int fd = open_raw(path, flags, 0, dir_fd)
    cdef Py_ssize_t wanted, done = 0, count
    cdef bytes data
    cdef char *buffer
    try:
        info = os.fstat(fd)
        if not S_ISREG(info.st_mode):
            return None, info
        wanted = min(<Py_ssize_t>info.st_size, limit)
        data = PyBytes_FromStringAndSize(NULL, wanted)
        buffer = PyBytes_AS_STRING(data)
        while done < wanted:
            count = read(fd, buffer + done, wanted - done)
            if count > 0:
                done += count
            elif count == 0:
                break
            elif errno == EINTR:
                PyErr_CheckSignals()
            else:
                raise_errno(errno, path)
        return (data if done == wanted else data[:done]), info
    finally:
        close_descriptor(fd)


def open_registry_entry(directory_path, name, int flags, Py_ssize_t limit):
    """Open the registry directory ``directory_path`` (never through a symbolic link),
    check it is safe as the registry requires (owned by root or this user; writable by
    others only with the sticky bit), then read its entry ``name`` as ``read_whole``
    does: ``(OwnedDescriptor of the directory, (device, inode), bytes or None,
    os.stat_result of the entry)``, or ``None`` (nothing kept) for a directory that fails
    the check, whose caller explains it. Failed system calls raise ``OSError``; the
    directory's descriptor is owned from the instant it exists."""
    cdef OwnedDescriptor directory = OwnedDescriptor(
        open_raw(directory_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0, AT_FDCWD))
    cdef struct_stat info
    if fstat(directory.fd, &info) != 0:
        raise_errno(errno, directory_path)
    if ((info.st_uid != 0 and info.st_uid != geteuid())
            or (info.st_mode & 0o022 and not info.st_mode & S_ISVTX)):
        directory.close()
        return None
    data, entry_stat = read_whole(directory.fd, name, flags, limit)
    return directory, (info.st_dev, info.st_ino), data, entry_stat


def open_file(path, int flags):
    """Open ``path`` and ``fstat`` it: ``(OwnedDescriptor, os.stat_result)``, the
    descriptor owned from the instant it exists and closed should the ``fstat`` fail."""
    cdef OwnedDescriptor owner = OwnedDescriptor(open_raw(path, flags, 0, AT_FDCWD))
    return owner, os.fstat(owner.fd)


def open_matching_file(path, int flags, mode_t st_mode, uid_t uid, gid_t gid, off_t least_size):
    """Open ``path`` and ``fstat`` it, in one call: ``(OwnedDescriptor, device, inode)``
    when it has exactly ``st_mode`` (type and permissions), owner ``uid`` and group
    ``gid``, and holds at least ``least_size`` bytes; ``None``, nothing kept, when the
    open fails or the file differs in any of these. The caller explains a ``None`` by
    doing the same the long way."""
    cdef OwnedDescriptor owner
    cdef struct_stat info
    try:
        owner = OwnedDescriptor(open_raw(path, flags, 0, AT_FDCWD))
    except OSError:
        return None
    if (fstat(owner.fd, &info) != 0 or info.st_mode != st_mode or info.st_uid != uid
            or info.st_gid != gid or info.st_size < least_size):
        owner.close()
        return None
    return owner, info.st_dev, info.st_ino


def mark_and_map(int dir_fd, range_file, int range_flags, path, dev_t device, ino_t inode,
                 int fd, uintptr_t addr, size_t length, bint writable, label,
                 bint die_when_marked):
    """An attach's mark and mapping, in one call: ``hold_shared_lock`` of the range file,
    then ``map_if_in_place`` of ``fd``; ``(mark, Mapping)``. ``None``, nothing kept, when
    the mark cannot be taken or the data is no longer in place, which the caller explains
    the long way. ``die_when_marked``: the fault point between the two (``faults``)."""
    cdef OwnedDescriptor mark
    try:
        mark = hold_shared_lock(dir_fd, range_file, range_flags)
    except OSError:
        return None
    if mark is None:
        return None
    if die_when_marked:
        kill(getpid(), SIGKILL)
    try:
        mapping = map_if_in_place(path, device, inode, fd, addr, length, writable, label)
    except BaseException:
        mark.close()
        raise
    if mapping is None:
        mark.close()
        return None
    return mark, mapping


def map_if_in_place(path, dev_t device, ino_t inode, int fd, uintptr_t addr, size_t length,
                    bint writable, label):
    """``Mapping.map_fixed`` of ``fd`` once ``path`` is shown to name the file ``(device,
    inode)`` still (``names_file``); ``None`` (nothing mapped) when it does not."""
    if not names_file(path, device, inode):
        return None
    return Mapping.map_fixed(fd, addr, length, writable, label)


def hold_shared_lock(int dir_fd, path, int flags):
    """Open ``path`` relative to ``dir_fd`` and take a shared ``flock`` on it without
    waiting (``LOCK_SH | LOCK_NB``): the ``OwnedDescriptor`` that holds the lock, or
    ``None`` (nothing kept) when ``path`` is not a regular file. ``BlockingIOError``
    while another holder has it exclusively. Raises the ``open`` and ``fcntl.flock``
    audit events, as ``os.open`` and ``fcntl.flock`` do."""
    cdef OwnedDescriptor owner = OwnedDescriptor(open_raw(path, flags, 0, dir_fd))
    cdef struct_stat info
    if fstat(owner.fd, &info) != 0:
        raise_errno(errno, path)
    if not S_ISREG(info.st_mode):
        owner.close()
        return None
    PySys_Audit("fcntl.flock", "ii", owner.fd, LOCK_SH | LOCK_NB)
    while flock(owner.fd, LOCK_SH | LOCK_NB) != 0:
        if errno != EINTR:
            raise_errno(errno, path)
        PyErr_CheckSignals()
    return owner


def names_file(path, dev_t device, ino_t inode):
    """True when ``path`` (not followed if a symbolic link) is the file ``(device,
    inode)``; False when it names another file or nothing."""
    cdef bytes encoded = encoded_path(path)
    cdef struct_stat info
    if lstat(encoded, &info) != 0:
        if errno == ENOENT:
            return False
        raise_errno(errno, path)
    return info.st_dev == device and info.st_ino == inode


def mount_table_unchanged(bytes namespace, int mountinfo_fd):
    """Whether this process's mount table is still the one last read, in one call: its
    mount namespace link (``/proc/self/ns/mnt``) still reads ``namespace`` and
    ``mountinfo_fd``, that namespace's ``/proc/self/mountinfo`` read since, polls no
    change (``POLLPRI``, consumed by the poll). False whenever either cannot be told."""
    cdef char link[128]
    cdef Py_ssize_t length = readlink(b"/proc/self/ns/mnt", link, sizeof(link))
    if length != len(namespace) or memcmp(link, <const char *>namespace, length) != 0:
        return False
    cdef pollfd watched
    watched.fd, watched.events, watched.revents = mountinfo_fd, POLLPRI, 0
    return poll(&watched, 1, 0) == 0


cdef class MappedBuffer:
    """Exports ``length`` bytes of a ``Mapping`` through the buffer protocol.

    ``memoryview(MappedBuffer(...))`` gives the zero-copy ``Region.buf``; read-only
    buffers refuse writable requests even when the mapping itself is writable.
    """

    cdef Mapping mapping
    cdef readonly size_t length
    cdef readonly bint readonly

    def __cinit__(self, Mapping mapping, size_t length, bint readonly):
        if length > mapping.length:
            raise ValueError("buffer longer than its mapping")
        if not readonly and not mapping.writable:
            raise ValueError("a writable buffer needs a writable mapping")
        self.mapping = mapping
        self.length = length
        self.readonly = readonly

    def __getbuffer__(self, Py_buffer *view, int flags):
        self.mapping._check_mapped()
        if (flags & PyBUF_WRITABLE) and self.readonly:
            raise BufferError(f"{self.mapping.label or 'the region'} is attached read-only")
        PyBuffer_FillInfo(view, self, <void *>self.mapping.addr, self.length, self.readonly, flags)
        self.mapping.exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.mapping.exports -= 1


def kernel_features():
    """Which mapping features of recent kernels this one has, found by trying them on a
    page of anonymous memory rather than trusting the version number (distributions
    backport): ``{"MAP_FIXED_NOREPLACE": bool, "MADV_POPULATE": bool}``.
    """
    cdef size_t length = PAGE_SIZE
    cdef void *page = mmap(NULL, length, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    cdef void *second
    cdef int err
    if page == MAP_FAILED:
        raise_errno(errno)
    try:
        # Asking for an address that is taken: EEXIST where the flag is known; older
        # kernels take it for a hint and answer with another address.
        second = mmap(page, length, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        err = errno
        if second != MAP_FAILED:
            munmap(second, length)
        noreplace = second == MAP_FAILED and err == EEXIST
        populate = madvise(page, length, MADV_POPULATE_READ) == 0
    finally:
        munmap(page, length)
    return {"MAP_FIXED_NOREPLACE": noreplace, "MADV_POPULATE": populate}


def address_range_free(uintptr_t addr, size_t length):
    """True when nothing of this process is mapped in ``[addr, addr + length)``.

    Two system calls (an inaccessible anonymous mapping placed there with
    ``MAP_FIXED_NOREPLACE``, then removed) instead of reading ``/proc/self/maps``; the
    answer may change the moment it is given, and ``Mapping.map_fixed`` still refuses an
    address that became taken.
    """
    cdef void *result
    cdef int err
    with nogil:
        result = mmap(<void *>addr, length, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        err = errno
    if result == MAP_FAILED:
        if err == EEXIST:
            return False
        raise_errno(err)
    munmap(result, length)
    # Kernels before 4.17 take the flag for a hint and answer elsewhere when taken.
    return <uintptr_t>result == addr
