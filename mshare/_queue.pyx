# cython: language_level=3, embedsignature=True
"""The slots of a named queue (``_queue.h``): who may write or read which slot, and waits.

Positions are handed out in order: a producer takes position ``tail`` (slot
``tail % slots``) when fewer than ``slots`` positions are outstanding and that slot is
free; a consumer takes position ``head`` once its slot is ready for that position. Copying
happens outside the queue's lock; only state changes happen under it.

Crash rules, decided from the states a killed holder can leave:

* a producer that died writing (its slot WRITING, its owner word dead) never has its item
  delivered: the consumer at that position frees the slot and moves on;
* a consumer that died holding a slot (READING, owner dead) loses the item: the next
  producer to need the slot frees it. Items are delivered at most once, never twice;
* a position whose slot is free or was handed out for another position was dropped (a
  producer died between the two stores of a claim, or ``reserve`` ended in an exception):
  the consumer skips it.

The counters and states are read once into locals and checked against the slot count and
slot size this process holds privately (from the name table's record of the queue); an item's
dtype and shape are copied out of its slot and checked before a view is made.
"""

from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS, PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from libc.stdint cimport int64_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcmp, memcpy, memset

import errno
import queue as stdlib_queue

from mshare._layout cimport MS_DTYPE_BYTES, MS_MAX_DIMS, ms_peek, ms_store
from mshare._mutex cimport (
    MS_LOCK_CLOSED, MS_LOCK_DEADLOCK, MS_LOCK_OWNER_DIED, MS_LOCK_TAKEN, monotonic,
    ms_holder_alive, ms_lock_release, ms_lock_swap, self_word, wait_for,
)
from mshare._shared cimport Bookkeeping
from mshare._slots cimport fixed_string
from mshare._waiting cimport sleep_on

from mshare._shared import INTERNAL_LOCK_TIMEOUT
from mshare.array_shapes import _array_bytes, _check_storable, _shape, stored_dtype
from mshare.errors import CorruptBookkeepingError


cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef extern from *:
    bint __builtin_mul_overflow(uint64_t a, uint64_t b, uint64_t *product) nogil
    # PyObject_GetBuffer without Cython's exception check: a source that is not one C-
    # contiguous block is copied another way, so its error is cleared, not raised.
    int get_buffer "PyObject_GetBuffer"(object source, Py_buffer *view, int flags)
    void PyErr_Clear()
    bint PyMemoryView_Check(object obj)
    PyObject *PyMemoryView_GET_BASE(object view)


cdef extern from "_queue_arrays.h":
    ctypedef Py_ssize_t npy_intp
    ctypedef struct PyArray_Descr:
        pass
    ctypedef struct PyArrayObject:
        pass
    PyTypeObject PyArray_Type
    int NPY_ARRAY_C_CONTIGUOUS, NPY_ARRAY_ALIGNED, NPY_ARRAY_WRITEABLE
    # Steals a reference to descr; the array's memory is data's, owned by base.
    object PyArray_NewFromDescr(PyTypeObject *subtype, PyArray_Descr *descr, int nd,
                                const npy_intp *dims, const npy_intp *strides, void *data,
                                int flags, PyObject *base)
    # Steals a reference to base, also when it fails.
    int PyArray_SetBaseObject(PyArrayObject *array, PyObject *base) except -1
    int _import_array() except -1


cdef extern from "_waiting.h" nogil:
    uint32_t ms_word_peek(uint64_t *word)


cdef extern from "_queue.h" nogil:
    enum ms_queue_state:
        MS_QUEUE_FREE
        MS_QUEUE_WRITING
        MS_QUEUE_READY
        MS_QUEUE_READING
    ctypedef struct ms_queue_header_t:
        uint64_t lock
        uint64_t filled
        uint64_t emptied
        uint64_t head
        uint64_t tail
        uint64_t item_sleepers
        uint64_t room_sleepers
    ctypedef struct ms_queue_item_t:
        uint64_t nbytes
        uint64_t ndim
        char dtype[32]
        uint64_t shape[8]
    ctypedef struct ms_queue_slot_t:
        uint64_t state
        uint64_t owner
        uint64_t position
        ms_queue_item_t item
    void ms_queue_notify(uint64_t *word, uint64_t *sleepers)
    void ms_queue_count_sleeper(uint64_t *sleepers, int64_t change)


QUEUE_KIND = "~queue"
HEADER_BYTES = sizeof(ms_queue_header_t)
SLOT_HEADER_BYTES = sizeof(ms_queue_slot_t)
# A waiter for a slot looks again this often (seconds): a writer it waits for may have died.
cdef double RECHECK = 0.02
# Before it sleeps, a waiter watches the word this long (seconds, the GIL released),
# yielding the CPU between looks: the other side often moves it sooner than a sleep and a
# wake-up would take, and may need this very CPU to do so.
cdef double SPIN = 50e-6

# Copies of at least this many bytes into a slot release the GIL.
cdef uint64_t RELEASE_GIL_BYTES = 1 << 16
# The largest byte or element count numpy can index.
cdef uint64_t INDEX_MAX = 0x7fffffffffffffff
# Item kinds (shape and dtype) each queue remembers as checked, so a stream of like items
# pays for the checks once; past this many the memory starts again.
cdef Py_ssize_t CHECKED_KINDS = 256

cdef object _CONSTRUCT = object()
cdef object _numpy = None
cdef object _NOTHING = object()  # an argument nobody passes

# What a claim attempt returns instead of a slot index (indices are below 2**40).
cdef enum:
    NOT_YET = -1       # nothing to claim now: wait for the other side
    SKIPPED = -2       # a dropped position was passed over: try again at once
    CLAIM_FAILED = -3  # an exception is set


cdef bint moved_within(uint64_t *word, uint32_t seen, double seconds) noexcept:
    """Whether the futex half of ``word`` leaves ``seen`` within ``seconds``, watched with
    the GIL released."""
    cdef double until
    cdef bint moved = True
    with nogil:
        until = monotonic() + seconds
        while ms_word_peek(word) == seen:
            if monotonic() > until:
                moved = False
                break
            sched_yield()
    return moved


def slot_stride(uint64_t slot_size):
    """Bytes one slot takes: its header and its payload rounded up to 64."""
    return sizeof(ms_queue_slot_t) + ((slot_size + 63) & ~<uint64_t>63)


cdef class SlotRing:
    """The slots of one queue over this process's mapping, and the calls that claim them
    (``mshare.queues.Queue`` adds the conveniences). Made by ``over_block``."""

    cdef Bookkeeping owner
    cdef object region  # the handle whose memoryview the lent arrays are views of
    cdef object buf  # that memoryview, fetched again once close() has released it
    cdef ms_queue_header_t *header
    cdef readonly uint64_t slots
    cdef readonly uint64_t slot_size
    cdef uint64_t stride
    cdef uint64_t mapped_at  # where the region's memoryview starts
    cdef dict to_write  # (shape, numpy dtype) -> (bytes, item header as bytes), checked
    cdef tuple last_kind  # (numpy dtype, shape, what to_write holds for them) of the last item
    cdef tuple last_dtype  # reserve()'s last dtype argument, and it made a numpy dtype
    cdef dict to_read  # an item header as bytes -> its numpy dtype, checked
    # The last item header read and its numpy dtype (None before the first): a stream of
    # like items is checked once, and compared, not hashed, after that.
    cdef ms_queue_item_t last_read
    cdef object last_read_dtype
    cdef readonly str name

    def __cinit__(self, token):
        if token is not _CONSTRUCT:
            raise TypeError("SlotRing objects are made by SlotRing.over_block()")

    @classmethod
    def over_block(cls, Bookkeeping owner not None, object region, str name, uint64_t addr,
                   uint64_t nbytes, uint64_t slots, uint64_t slot_size):
        """The queue in the named block at ``addr`` (checked against the arena by the name
        table) of ``region`` (a handle, whose ``addr`` and ``buf`` it uses);
        CorruptBookkeepingError unless ``slots`` slots of ``slot_size`` fill it."""
        cdef SlotRing self
        if (slots == 0 or slot_size == 0 or slots > nbytes or slot_size > nbytes
                or addr % 64 or sizeof(ms_queue_header_t) + slots * slot_stride(slot_size) != nbytes):
            raise CorruptBookkeepingError(
                f"the queue {name!r} is recorded as {slots} slots of {slot_size} bytes in a "
                f"block of {nbytes}", owner.name)
        self = cls.__new__(cls, _CONSTRUCT)
        self.owner = owner
        self.region = region
        self.buf = memoryview_of(region)
        self.header = <ms_queue_header_t *><uintptr_t>addr
        self.slots = slots
        self.slot_size = slot_size
        self.stride = slot_stride(slot_size)
        self.name = name
        self.mapped_at = region.addr
        self.to_write, self.to_read = {}, {}
        self.last_kind = (_NOTHING, None, None)
        self.last_dtype = (_NOTHING, None)
        return self

    @property
    def region_name(self):
        """The name of the region the queue lives in."""
        return self.region.name

    cdef ms_queue_slot_t *slot(self, uint64_t index) noexcept:
        return <ms_queue_slot_t *>(<char *>self.header + sizeof(ms_queue_header_t)
                                   + index * self.stride)

    cdef uint64_t payload(self, uint64_t index) noexcept:
        return <uint64_t><uintptr_t>self.slot(index) + sizeof(ms_queue_slot_t)

    cdef int take(self, uint64_t me) except -1:
        """The queue's lock, held for a few stores by anyone: wait as for the allocator's."""
        cdef uint64_t observed = 0
        cdef double deadline = monotonic() + INTERNAL_LOCK_TIMEOUT
        cdef int outcome
        while not ms_lock_swap(&self.header.lock, &observed, me):
            outcome = wait_for(&self.header.lock, me, observed,
                               max(0.0, deadline - monotonic()), &self.owner.closing)
            if outcome == MS_LOCK_TAKEN:
                return 0
            if outcome == MS_LOCK_OWNER_DIED and monotonic() < deadline:
                observed = 0  # every state a dead holder can leave is read sensibly
                continue
            if outcome == MS_LOCK_CLOSED:
                raise ValueError(f"{self.owner.name or 'the region'} was closed while this "
                                 f"thread waited on the queue {self.name!r}")
            if outcome == MS_LOCK_DEADLOCK:
                raise CorruptBookkeepingError(
                    f"the lock of queue {self.name!r} names this thread, which does not "
                    f"hold it", self.owner.name)
            raise TimeoutError(
                errno.ETIMEDOUT,
                f"the lock of queue {self.name!r} stayed held for {INTERNAL_LOCK_TIMEOUT:g} s: "
                f"its holder is stopped, or a writer of the region keeps writing over it",
                self.owner.name)
        return 0

    cdef uint64_t outstanding(self, uint64_t head, uint64_t tail) except? 0xffffffffffffffff:
        if tail - head > self.slots:
            raise CorruptBookkeepingError(
                f"the queue {self.name!r} counts {tail - head} items in {self.slots} slots",
                self.owner.name)
        return tail - head

    cdef int wait_on(self, uint64_t *word, uint64_t *sleepers, uint32_t seen,
                     double deadline) except -1:
        """Sleep until ``word`` moves on (1), or a recheck is due or ``deadline`` passes (0;
        < 0: never), counted in ``sleepers`` while asleep."""
        cdef double until = monotonic() + RECHECK
        cdef uint32_t current
        if moved_within(word, seen, SPIN):
            return 1
        if 0 <= deadline < until:
            until = deadline
        ms_queue_count_sleeper(sleepers, 1)
        try:
            return sleep_on(self.owner, word, seen, until, &current, self.name)
        finally:
            ms_queue_count_sleeper(sleepers, -1)

    cdef int64_t claim(self, uint64_t me, bint writing, double deadline, bytes item,
                       ms_queue_slot_t *copy) except CLAIM_FAILED:
        """The loop both claims share: try under the queue's lock, and until that hands the
        thread whose lock word is ``me`` a slot, sleep on the word the other side moves
        (NOT_YET once ``deadline`` passes). A publish or a free wakes one sleeper, so a
        claim passes a wake on to its own side when it leaves more behind (items to read,
        room to write) or, having slept, leaves without a slot: the wake it may have taken
        was for someone."""
        cdef uint64_t *word = &self.header.emptied if writing else &self.header.filled
        cdef uint64_t *sleepers = (&self.header.room_sleepers if writing
                                   else &self.header.item_sleepers)
        cdef uint32_t seen
        cdef int64_t index
        # Whether a whole recheck interval passed with nothing moving: only then is a slot
        # holder's liveness worth its /proc read.
        cdef bint stalled = False, slept = False, more = False
        self.owner.enter()
        try:
            while True:
                self.take(me)
                try:
                    seen = ms_word_peek(word)
                    if writing:
                        index = self.try_writing(me, item, stalled, &more)
                    else:
                        index = self.try_reading(me, copy, stalled, &more)
                finally:
                    ms_lock_release(&self.header.lock)
                if index >= 0:
                    if more:
                        ms_queue_notify(word, sleepers)
                    return index
                if index == SKIPPED:
                    continue
                if 0 <= deadline <= monotonic():
                    if slept:
                        ms_queue_notify(word, sleepers)
                    return NOT_YET
                slept = True
                stalled = not self.wait_on(word, sleepers, seen, deadline)
        except BaseException:
            if slept:
                ms_queue_notify(word, sleepers)
            raise
        finally:
            self.owner.leave()

    cdef int64_t try_writing(self, uint64_t me, bytes item, bint stalled,
                             bint *more) except CLAIM_FAILED:
        """Under the lock: the slot of position ``tail`` marked WRITING for this thread with
        the item's header (``item``, made by ``item_kind``), or NOT_YET while every slot is
        taken (a slot held by a dead process counts as free once the wait has
        ``stalled``). ``more``: whether room is left for another producer."""
        cdef uint64_t head = ms_peek(&self.header.head), tail = ms_peek(&self.header.tail)
        cdef uint64_t index, state
        cdef ms_queue_slot_t *slot
        if self.outstanding(head, tail) == self.slots:
            return NOT_YET
        index = tail % self.slots
        slot = self.slot(index)
        state = ms_peek(&slot.state)
        if (stalled and state != MS_QUEUE_FREE and state != MS_QUEUE_READY
                and not ms_holder_alive(ms_peek(&slot.owner))):
            state = MS_QUEUE_FREE  # its writer or reader died: dropped
        if state != MS_QUEUE_FREE:
            return NOT_YET
        slot.owner = me
        slot.position = tail
        memcpy(&slot.item, PyBytes_AS_STRING(item), sizeof(ms_queue_item_t))
        ms_store(&slot.state, MS_QUEUE_WRITING)
        ms_store(&self.header.tail, tail + 1)
        more[0] = tail + 1 - head < self.slots
        return index

    cdef int64_t try_reading(self, uint64_t me, ms_queue_slot_t *copy, bint stalled,
                             bint *more) except CLAIM_FAILED:
        """Under the lock: the slot of position ``head`` marked READING for this thread, its
        header copied into ``copy``; NOT_YET while it is empty or being written (by a live
        producer, checked once the wait has ``stalled``); SKIPPED when the position was
        dropped and ``head`` moved past it. ``more``: whether positions are left behind."""
        cdef uint64_t head = ms_peek(&self.header.head), tail = ms_peek(&self.header.tail)
        cdef uint64_t index, state, position
        cdef ms_queue_slot_t *slot
        if self.outstanding(head, tail) == 0:
            return NOT_YET
        index = head % self.slots
        slot = self.slot(index)
        state = ms_peek(&slot.state)
        position = ms_peek(&slot.position)
        if position == head and state == MS_QUEUE_READY:
            memcpy(copy, slot, sizeof(ms_queue_slot_t))
            slot.owner = me
            ms_store(&slot.state, MS_QUEUE_READING)
            ms_store(&self.header.head, head + 1)
            more[0] = tail - head > 1
            return index
        if (position == head and state == MS_QUEUE_WRITING
                and (not stalled or ms_holder_alive(ms_peek(&slot.owner)))):
            return NOT_YET  # its producer is still writing: wait for it
        if position == head:  # a dead producer's or reader's: dropped
            ms_store(&slot.state, MS_QUEUE_FREE)
        ms_store(&self.header.head, head + 1)
        return SKIPPED

    def payload_addr(self, uint64_t index):
        """Where slot ``index``'s bytes start."""
        if index >= self.slots:
            raise ValueError(f"queue {self.name!r} has no slot {index}")
        return self.payload(index)

    def reserve(self, shape, dtype, timeout=None):
        """A free slot as an array of ``shape`` and ``dtype`` to fill in place, as a context
        manager; published when the block ends, dropped (never delivered) if it ends in an
        exception. ``queue.Full`` when ``timeout`` seconds pass with every slot taken."""
        cdef Loan loan = Loan.__new__(Loan)
        if not is_int_tuple(shape):
            shape = _shape(shape)  # a tuple of ints is checked once, by item_kind
        if dtype is not self.last_dtype[0]:
            np = numpy_module()
            # Only a dtype, a type or a string given again is taken to mean the same dtype:
            # another object could change in between.
            self.last_dtype = (dtype if isinstance(dtype, (type, str, np.dtype)) else _NOTHING,
                               np.dtype(dtype))
        loan.dtype = self.last_dtype[1]
        loan.item = self.item_kind(shape, loan.dtype)[1]
        self.prepare(loan, timeout, MS_QUEUE_WRITING, MS_QUEUE_READY)
        return loan

    def get(self, timeout=None):
        """The oldest item as a read-only, zero-copy array valid inside the ``with`` block;
        the slot is freed when the block ends. ``queue.Empty`` when ``timeout`` seconds
        pass."""
        cdef Lent lent = Lent.__new__(Lent)
        self.prepare(lent, timeout, MS_QUEUE_READING, MS_QUEUE_FREE)
        return lent

    cdef int prepare(self, SlotClaim claim, object timeout, uint64_t held,
                     uint64_t done) except -1:
        claim.ring, claim.buf, claim.timeout = self, self.region_buf(), timeout
        claim.span = timeout_span(timeout)
        claim.held, claim.done = held, done
        return 0

    cdef object region_buf(self):
        """The region's memoryview, looked up on the handle (a Python call) only once the
        one held here was released: a ``close()`` that refused made the handle a new one,
        and a closed handle raises ``ValueError``."""
        cdef Py_buffer view
        if get_buffer(self.buf, &view, PyBUF_SIMPLE) == 0:
            PyBuffer_Release(&view)
            return self.buf
        PyErr_Clear()
        self.buf = memoryview_of(self.region)
        return self.buf

    def put(self, data, timeout=None):
        """Copy ``data`` (bytes-like or a numpy array) into a free slot and publish it;
        ``queue.Full`` when ``timeout`` seconds pass with every slot taken."""
        cdef uint64_t nbytes, me = self_word()
        cdef bytes item
        cdef int64_t index
        cdef Py_buffer view
        np = numpy_module()
        if isinstance(data, np.ndarray):
            source = data
        else:
            source = np.frombuffer(memoryview(data).cast("B"), np.uint8)
        buf = self.region_buf()
        nbytes, item = self.item_kind(source.shape, source.dtype)
        index = self.claim(me, True, deadline_after(timeout_span(timeout)), item, NULL)
        if index == NOT_YET:
            raise stdlib_queue.Full(f"queue {self.name!r} stayed full for {timeout} s")
        try:
            if get_buffer(source, &view, PyBUF_C_CONTIGUOUS) == 0:
                try:
                    if <uint64_t>view.len != nbytes:
                        raise ValueError(f"an array of {nbytes} bytes exported {view.len}")
                    copy_in(<void *><uintptr_t>self.payload(index), view.buf, nbytes)
                finally:
                    PyBuffer_Release(&view)
            else:
                PyErr_Clear()
                self.view_of(buf, index, source.dtype, item, True)[...] = source
        except BaseException:
            self.hand_back(index, me, MS_QUEUE_WRITING, MS_QUEUE_FREE)
            raise
        self.hand_back(index, me, MS_QUEUE_WRITING, MS_QUEUE_READY)

    cdef tuple item_kind(self, tuple shape, object dtype):
        """The byte count and the slot's item header (``ms_queue_item_t`` as bytes) of an
        item of ``shape`` and ``dtype``, checked once per kind."""
        cdef ms_queue_item_t header
        cdef unsigned d
        if dtype is self.last_kind[0] and shape == self.last_kind[1]:
            return self.last_kind[2]  # like the item before: no tuple made, no hash
        key = (shape, dtype)
        known = self.to_write.get(key)
        if known is None:
            _check_storable(dtype)
            nbytes = _array_bytes(_shape(shape), dtype)
            if nbytes > self.slot_size:
                raise ValueError(f"an item of {nbytes} bytes does not fit the "
                                 f"{self.slot_size}-byte slots of queue {self.name!r}")
            code = dtype.str.encode("ascii")
            memset(&header, 0, sizeof(header))
            header.nbytes = nbytes
            header.ndim = len(shape)
            memcpy(header.dtype, <char *>code, len(code))
            for d in range(header.ndim):
                header.shape[d] = shape[d]
            known = (nbytes, PyBytes_FromStringAndSize(<char *>&header, sizeof(header)))
            remember(self.to_write, key, known)
        self.last_kind = (dtype, shape, known)
        return known

    cdef object view_of(self, object buf, uint64_t index, object dtype, bytes item,
                        bint writable):
        """The array of slot ``index`` that the item header ``item`` describes."""
        return slot_view(buf, self.payload(index) - self.mapped_at, dtype,
                         <const ms_queue_item_t *>PyBytes_AS_STRING(item), writable)

    cdef object read_view(self, object buf, uint64_t index, ms_queue_slot_t *copy):
        """The read-only array of the item whose header was copied into ``copy``, checked
        against this queue's slot size; CorruptBookkeepingError (the item dropped) unless
        its dtype and shape make its byte count."""
        if (self.last_read_dtype is None
                or memcmp(&copy.item, &self.last_read, sizeof(ms_queue_item_t)) != 0):
            key = PyBytes_FromStringAndSize(<char *>&copy.item, sizeof(ms_queue_item_t))
            dtype = self.to_read.get(key)
            if dtype is None:
                dtype = self.read_kind(&copy.item)
                remember(self.to_read, key, dtype)
            self.last_read = copy.item
            self.last_read_dtype = dtype
        return slot_view(buf, self.payload(index) - self.mapped_at, self.last_read_dtype,
                         &copy.item, False)

    cdef object read_kind(self, const ms_queue_item_t *item):
        """The numpy dtype of an item whose header (a private copy) records it, checked
        against its shape and byte count. Only C-implemented calls: no Python code runs, so
        no signal handler, between a claim and the view it returns."""
        cdef uint64_t nbytes = item.nbytes, ndim = item.ndim, d
        cdef uint64_t extent, itemsize, elements = 1, total = 1
        cdef bint overflow = False
        np = numpy_module()
        problem = None
        if nbytes > self.slot_size or ndim > MS_MAX_DIMS or item.dtype[MS_DTYPE_BYTES - 1]:
            problem = f"{nbytes} bytes in {ndim} dimensions"
        else:
            text = fixed_string(item.dtype, MS_DTYPE_BYTES)
            try:
                # Matched before numpy parses it, which may kill the process (STORED_DTYPE).
                dtype = stored_dtype(text.decode("ascii"))
            except (TypeError, ValueError, UnicodeDecodeError):
                dtype = None
            if (dtype is None or dtype.itemsize == 0 or dtype.hasobject
                    or np.dtype(dtype.str) != dtype):
                problem = f"dtype {text!r}, which no slot can hold"
            else:
                itemsize = dtype.itemsize
                for d in range(ndim):
                    extent = item.shape[d]
                    if (extent > INDEX_MAX
                            or __builtin_mul_overflow(elements, max(extent, 1), &elements)
                            or __builtin_mul_overflow(total, extent, &total)):
                        overflow = True
                if (__builtin_mul_overflow(elements, itemsize, &elements) or elements > INDEX_MAX
                        or __builtin_mul_overflow(total, itemsize, &total)):
                    overflow = True
                if overflow or total != nbytes:
                    problem = (f"{dtype} of shape {[item.shape[d] for d in range(ndim)]}, "
                               f"which is not {nbytes} bytes")
        if problem is not None:
            raise CorruptBookkeepingError(
                f"an item of queue {self.name!r} is recorded as {problem}; it was dropped",
                self.owner.name)
        return dtype

    cdef int hand_back(self, uint64_t index, uint64_t me, uint64_t expected,
                       uint64_t state) except -1:
        """Move slot ``index`` from ``expected`` (held by ``me``) to ``state`` and wake one
        waiter of the side that waits for it."""
        self.finish(index, me, expected, state)
        if state == MS_QUEUE_READY:
            ms_queue_notify(&self.header.filled, &self.header.item_sleepers)
        else:
            ms_queue_notify(&self.header.emptied, &self.header.room_sleepers)
        return 0

    cdef int finish(self, uint64_t index, uint64_t me, uint64_t expected,
                    uint64_t state) except -1:
        """Move slot ``index`` from ``expected`` (held by ``me``) to ``state``;
        RuntimeError if ``me`` does not hold it (a writer took it from a thread it judged
        dead)."""
        cdef ms_queue_slot_t *slot = self.slot(index)
        cdef bint held
        self.owner.enter()
        try:
            self.take(me)
            try:
                held = ms_peek(&slot.state) == expected and ms_peek(&slot.owner) == me
                if held:
                    ms_store(&slot.state, state)
            finally:
                ms_lock_release(&self.header.lock)
        finally:
            self.owner.leave()
        if not held:
            raise RuntimeError(f"slot {index} of queue {self.name!r} is not held by this "
                               f"thread any more")
        return 0


cdef class SlotClaim:
    """What ``Loan`` and ``Lent`` share: the slot one claimed, given back when its ``with``
    block ends or, failing that, when the object is deallocated."""

    cdef SlotRing ring
    cdef object buf, timeout
    cdef uint64_t me
    cdef double span
    cdef int64_t index
    cdef uint64_t held  # the state of a slot this object holds: WRITING or READING
    cdef uint64_t done  # the state it leaves at a block's normal end

    def __cinit__(self):
        self.index = -1

    cdef uint64_t begin(self) except 0:
        """This thread's lock word, which will hold the slot."""
        if self.index >= 0:
            raise RuntimeError(f"this {type(self).__name__.lower()} of queue {self.ring.name!r} "
                               f"already claimed its slot")
        self.me = self_word()
        return self.me

    def __exit__(self, kind, error, trace):
        self.settle(self.done if kind is None else MS_QUEUE_FREE)
        return False

    cdef int settle(self, uint64_t state) except -1:
        cdef int64_t index = self.index
        self.index = -1
        if index >= 0:
            self.ring.hand_back(index, self.me, self.held, state)
        return 0

    def __dealloc__(self):
        if self.index >= 0:
            settle_quietly(self.ring, self.index, self.me, self.held)


cdef class Loan(SlotClaim):
    """``Queue.reserve``'s context manager. Its ``__enter__`` claims a slot and makes its
    view in C, with no Python code between, so a signal handler (Ctrl-C) runs either
    before the claim or after ``__enter__`` has returned, when the ``with`` statement owns
    the loan: the slot is published at a normal exit, dropped at an exception."""

    cdef object dtype
    cdef bytes item  # the slot's item header, made by SlotRing.item_kind

    def __enter__(self):
        cdef int64_t index = self.ring.claim(self.begin(), True, deadline_after(self.span),
                                             self.item, NULL)
        if index == NOT_YET:
            raise stdlib_queue.Full(f"queue {self.ring.name!r} stayed full for {self.timeout} s")
        self.index = index
        try:
            return self.ring.view_of(self.buf, index, self.dtype, self.item, True)
        except BaseException:
            self.settle(MS_QUEUE_FREE)
            raise


cdef class Lent(SlotClaim):
    """``Queue.get``'s context manager: claims the oldest item and makes its read-only view
    in C at ``__enter__`` (see ``Loan`` for why), frees the slot at exit."""

    def __enter__(self):
        cdef ms_queue_slot_t copy
        cdef int64_t index = self.ring.claim(self.begin(), False, deadline_after(self.span),
                                             None, &copy)
        if index == NOT_YET:
            raise stdlib_queue.Empty(f"queue {self.ring.name!r} stayed empty for "
                                     f"{self.timeout} s")
        self.index = index
        try:
            return self.ring.read_view(self.buf, index, &copy)
        except BaseException:
            self.settle(MS_QUEUE_FREE)
            raise


cdef object memoryview_of(object region):
    """``region.buf``, which lent arrays are views of: a memoryview, or TypeError."""
    buf = region.buf
    if not PyMemoryView_Check(buf):
        raise TypeError(f"a queue lends views of its region's memoryview, not of "
                        f"{type(buf).__name__}")
    return buf


cdef object slot_view(object buf, uint64_t offset, object dtype, const ms_queue_item_t *item,
                      bint writable):
    """An array of ``dtype`` and the shape in ``item`` (both checked) over ``buf`` (the
    region's memoryview) from ``offset``, made through numpy's C API: no argument parsing,
    no Python call. Its base is the object exporting ``buf``'s memory, as for an array numpy
    makes from ``buf``, so the region's ``close()`` refuses while it lives."""
    cdef Py_buffer view
    cdef npy_intp dims[8]  # MS_MAX_DIMS, as in ms_queue_item_t.shape
    cdef PyObject *exporter
    cdef int flags = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED
    cdef unsigned d
    numpy_module()
    # Also refuses a memoryview released by close(), and a read-only one for a writer.
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE | (PyBUF_WRITABLE if writable else 0))
    try:
        if offset > <uint64_t>view.len or item.nbytes > <uint64_t>view.len - offset:
            raise ValueError(f"an item of {item.nbytes} bytes at offset {offset} lies outside "
                             f"the region's {view.len} bytes")
        if item.ndim > MS_MAX_DIMS:
            raise ValueError(f"an item of {item.ndim} dimensions has more than {MS_MAX_DIMS}")
        for d in range(item.ndim):
            dims[d] = <npy_intp>item.shape[d]
        if writable:
            flags |= NPY_ARRAY_WRITEABLE
        Py_INCREF(dtype)
        array = PyArray_NewFromDescr(&PyArray_Type, <PyArray_Descr *>dtype, <int>item.ndim,
                                     dims, NULL, <char *>view.buf + offset, flags, NULL)
        exporter = PyMemoryView_GET_BASE(buf)
        Py_INCREF(<object>exporter)
        PyArray_SetBaseObject(<PyArrayObject *>array, exporter)
        return array
    finally:
        PyBuffer_Release(&view)


cdef void settle_quietly(SlotRing ring, int64_t index, uint64_t me, uint64_t expected) noexcept:
    """Free a slot whose loan is deallocated unsettled; a deallocation cannot raise, and
    whatever stopped the freeing (the region closed, the slot taken over) leaves the slot
    to the crash rules."""
    try:
        ring.hand_back(index, me, expected, MS_QUEUE_FREE)
    except BaseException:
        pass


cdef void copy_in(void *slot, const void *source, uint64_t nbytes) noexcept:
    if nbytes < RELEASE_GIL_BYTES:
        memcpy(slot, source, nbytes)
    else:
        with nogil:
            memcpy(slot, source, nbytes)


cdef bint is_int_tuple(object shape):
    if type(shape) is not tuple:
        return False
    for extent in <tuple>shape:
        if type(extent) is not int:
            return False
    return True


cdef double timeout_span(object timeout) except? -2:
    """Seconds a claim may wait: -1 for None (forever)."""
    if timeout is None:
        return -1
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
    return timeout


cdef inline double deadline_after(double span) noexcept:
    return -1 if span < 0 else monotonic() + span


cdef object numpy_module():
    """numpy, its C API fetched the first time."""
    global _numpy
    if _numpy is None:
        import numpy
        _import_array()
        _numpy = numpy
    return _numpy


cdef int remember(dict kinds, object key, object value) except -1:
    if len(kinds) >= CHECKED_KINDS:
        kinds.clear()
    kinds[key] = value
    return 0
