"""Named queues of fixed-size slots inside a region: arrays handed over with one copy or none.

``region.queue(name, slots, slot_size)`` makes one, ``region.queue(name)`` finds it. A
producer ``put``s bytes, a ``memoryview`` or a numpy array (one copy into a free slot, no
pickling), or ``reserve``s a slot and fills it in place; a consumer ``get``s a zero-copy,
read-only view of the oldest item, valid inside its ``with`` block. The slots and their
crash rules are in ``mshare._queue``.

>>> jobs = region.queue("frames", slots=8, slot_size=1 << 20)
>>> jobs.put(numpy.ones((256, 256), "float32"))
>>> with jobs.get(timeout=5) as frame:          # another process
...     total = frame.sum()
"""

import errno
import queue as stdlib_queue
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional, Type
import time

from mshare._queue import HEADER_BYTES, QUEUE_KIND, SlotRing, slot_stride
from mshare._waiting import KINDS
from mshare.errors import CorruptBookkeepingError
from mshare.array_shapes import _array_bytes, _check_storable, _shape

if TYPE_CHECKING:
    import numpy
    import numpy.typing


def find_or_create(region, name, slots, slot_size):
    """The queue ``name`` of ``region``: made when ``slots`` and ``slot_size`` are given."""
    bookkeeping = region._writable("queue()")
    if slots is not None or slot_size is not None:
        for value, what in ((slots, "slots"), (slot_size, "slot_size")):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{what} must be an int, not {type(value).__name__}")
            if not 1 <= value < 1 << 40:
                raise ValueError(f"{what} must be from 1 to 2**40 - 1, not {value}")
        nbytes = HEADER_BYTES + slots * slot_stride(slot_size)
        addr = bookkeeping.create_named(name, nbytes, QUEUE_KIND, (slots, slot_size), 64,
                                        zero=True)
        return Queue(region, SlotRing.over_block(bookkeeping, name, addr, nbytes, slots,
                                                 slot_size))
    found = bookkeeping.find_named(name)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, f"no queue named {name!r}", region.name)
    addr, nbytes, kind, shape = found
    if kind != QUEUE_KIND:
        raise TypeError(f"{name!r} is a named {KINDS.get(kind, 'array')}, not a queue")
    if len(shape) != 2:
        raise CorruptBookkeepingError(f"the queue {name!r} is recorded without its sizes",
                                      region.name)
    return Queue(region, SlotRing.over_block(bookkeeping, name, addr, nbytes, *shape))


def _deadline(timeout):
    if timeout is None:
        return -1.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
    return time.monotonic() + timeout


# Item kinds (shape and dtype) each queue remembers as checked, so a stream of like items
# pays for the checks once; past this many the memory starts again.
CHECKED_KINDS = 256


class Queue:
    """A named queue of ``slots`` slots of ``slot_size`` bytes; many producers, many
    consumers, FIFO per producer. See the module docstring."""

    def __init__(self, region, ring):
        self._region = region
        self._ring = ring
        self.name = ring.name
        self.slots = ring.slots
        self.slot_size = ring.slot_size
        self._to_write = {}  # (shape, numpy dtype) -> (bytes, dtype string), both checked
        self._to_read = {}  # (dtype string, shape, bytes) read from a slot -> numpy dtype

    def __repr__(self):
        return (f"<mshare queue {self.name!r}: {self.slots} slots of {self.slot_size} bytes "
                f"in {self._region.name!r}>")

    def put(self, data: "numpy.typing.ArrayLike", timeout: Optional[float] = None) -> None:
        """Copy ``data`` (bytes-like or a numpy array) into a free slot and publish it;
        ``queue.Full`` when ``timeout`` seconds pass with every slot taken."""
        import numpy

        if isinstance(data, numpy.ndarray):
            source = data
        else:
            source = numpy.frombuffer(memoryview(data).cast("B"), numpy.uint8)
        with _Loan(self, source.shape, source.dtype, timeout) as slot:
            slot[...] = source

    def put_nowait(self, data: "numpy.typing.ArrayLike") -> None:
        self.put(data, timeout=0)

    def reserve(self, shape: "int | tuple[int, ...]", dtype: "numpy.typing.DTypeLike",
                timeout: Optional[float] = None) -> "_Loan":
        """A free slot as an array of ``shape`` and ``dtype`` to fill in place, as a context
        manager; published when the block ends, dropped (never delivered) if it ends in an
        exception. ``queue.Full`` when ``timeout`` seconds pass with every slot taken."""
        import numpy

        if type(shape) is not tuple or any(type(extent) is not int for extent in shape):
            shape = _shape(shape)  # a tuple of ints is checked once, by _bytes_of
        return _Loan(self, shape, numpy.dtype(dtype), timeout)

    def get(self, timeout: Optional[float] = None) -> "_Lent":
        """The oldest item as a read-only, zero-copy array valid inside the ``with`` block;
        the slot is freed when the block ends. ``queue.Empty`` when ``timeout`` seconds
        pass."""
        return _Lent(self, timeout)

    def get_copy(self, timeout: Optional[float] = None) -> "numpy.typing.NDArray[Any]":
        """The oldest item, copied out of its slot (the slot is freed at once)."""
        with _Lent(self, timeout) as item:
            return item.copy()

    def get_nowait(self) -> "numpy.typing.NDArray[Any]":
        return self.get_copy(timeout=0)

    def _bytes_of(self, shape, dtype):
        """The bytes and dtype string of an item of ``shape`` and ``dtype``, checked."""
        key = (shape, dtype)
        known = self._to_write.get(key)
        if known is None:
            _check_storable(dtype)
            known = (_array_bytes(_shape(shape), dtype), dtype.str)
            self._remember(self._to_write, key, known)
        return known

    def _checked_dtype(self, nbytes, dtype, shape):
        """The numpy dtype of an item whose slot header read ``dtype`` and ``shape`` (private
        copies); CorruptBookkeepingError unless they make ``nbytes`` bytes."""
        import numpy

        key = (dtype, shape, nbytes)
        known = self._to_read.get(key)
        if known is not None:
            return known
        try:
            stored = numpy.dtype(dtype)
            _check_storable(stored)
            if _array_bytes(shape, stored) != nbytes:
                raise ValueError(f"{shape} x {stored} is not {nbytes} bytes")
        except (TypeError, ValueError) as error:
            raise CorruptBookkeepingError(
                f"an item of queue {self.name!r} is recorded as {shape} x {dtype!r}: {error}",
                self._region.name) from None
        self._remember(self._to_read, key, stored)
        return stored

    @staticmethod
    def _remember(kinds, key, value):
        if len(kinds) >= CHECKED_KINDS:
            kinds.clear()
        kinds[key] = value

    def _view(self, addr, dtype, shape):
        import numpy

        return numpy.ndarray(shape, dtype, buffer=self._region.buf,
                             offset=addr - self._region.addr)


class _Loan:
    """``Queue.reserve``'s context manager: a claimed slot, published or dropped at exit."""

    __slots__ = ("queue", "index", "view", "shape", "dtype", "timeout")

    def __init__(self, queue, shape, dtype, timeout):
        self.queue, self.shape, self.dtype, self.timeout = queue, shape, dtype, timeout

    def __enter__(self) -> "numpy.typing.NDArray[Any]":
        queue = self.queue
        nbytes, dtype_str = queue._bytes_of(self.shape, self.dtype)
        index = queue._ring.claim_for_writing(nbytes, dtype_str, self.shape,
                                              _deadline(self.timeout))
        if index is None:
            raise stdlib_queue.Full(f"queue {queue.name!r} stayed full for {self.timeout} s")
        self.index = index
        try:
            self.view = queue._view(queue._ring.payload_addr(index), self.dtype, self.shape)
        except BaseException:
            queue._ring.drop(index)
            raise
        return self.view

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 trace: Optional[TracebackType]) -> bool:
        self.view = None
        if kind is None:
            self.queue._ring.publish(self.index)
        else:
            self.queue._ring.drop(self.index)
        return False


class _Lent:
    """``Queue.get``'s context manager: the oldest item's slot, freed at exit."""

    __slots__ = ("queue", "index", "timeout")

    def __init__(self, queue, timeout):
        self.queue, self.timeout = queue, timeout

    def __enter__(self) -> "numpy.typing.NDArray[Any]":
        queue = self.queue
        item = queue._ring.claim_for_reading(_deadline(self.timeout))
        if item is None:
            raise stdlib_queue.Empty(f"queue {queue.name!r} stayed empty for {self.timeout} s")
        index, addr, nbytes, dtype, shape = item
        self.index = index
        try:
            view = queue._view(addr, queue._checked_dtype(nbytes, dtype, shape), shape)
            view.flags.writeable = False
        except BaseException:
            queue._ring.release(index)
            raise
        return view

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 trace: Optional[TracebackType]) -> bool:
        self.queue._ring.release(self.index)
        return False
