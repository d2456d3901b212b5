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

import contextlib
import errno
import queue as stdlib_queue
from typing import TYPE_CHECKING, Any, Iterator, Optional

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
    import time

    if timeout is None:
        return -1.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
    return time.monotonic() + timeout


class Queue:
    """A named queue of ``slots`` slots of ``slot_size`` bytes; many producers, many
    consumers, FIFO per producer. See the module docstring."""

    def __init__(self, region, ring):
        self._region = region
        self._ring = ring
        self.name = ring.name
        self.slots = ring.slots
        self.slot_size = ring.slot_size

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
        with self.reserve(source.shape, source.dtype, timeout=timeout) as slot:
            slot[...] = source

    def put_nowait(self, data: "numpy.typing.ArrayLike") -> None:
        self.put(data, timeout=0)

    @contextlib.contextmanager
    def reserve(self, shape: "int | tuple[int, ...]", dtype: "numpy.typing.DTypeLike",
                timeout: Optional[float] = None) -> "Iterator[numpy.typing.NDArray[Any]]":
        """A free slot as an array of ``shape`` and ``dtype`` to fill in place; published
        when the block ends, dropped (never delivered) if it ends in an exception."""
        import numpy

        dtype = numpy.dtype(dtype)
        shape = _shape(shape)
        _check_storable(dtype)
        nbytes = _array_bytes(shape, dtype)
        index = self._ring.claim_for_writing(nbytes, dtype.str, shape, _deadline(timeout))
        if index is None:
            raise stdlib_queue.Full(f"queue {self.name!r} stayed full for {timeout} s")
        try:
            view = self._view(self._ring.payload_addr(index), dtype, shape)
            yield view
        except BaseException:
            del view
            self._ring.drop(index)
            raise
        del view
        self._ring.publish(index)

    @contextlib.contextmanager
    def get(self, timeout: Optional[float] = None) -> "Iterator[numpy.typing.NDArray[Any]]":
        """The oldest item as a read-only, zero-copy array valid inside the block; the slot
        is freed when the block ends. ``queue.Empty`` when ``timeout`` seconds pass."""
        item = self._ring.claim_for_reading(_deadline(timeout))
        if item is None:
            raise stdlib_queue.Empty(f"queue {self.name!r} stayed empty for {timeout} s")
        index, addr, nbytes, dtype, shape = item
        try:
            view = self._checked_view(addr, nbytes, dtype, shape)
            view.flags.writeable = False
            yield view
        finally:
            view = None
            self._ring.release(index)

    def get_copy(self, timeout: Optional[float] = None) -> "numpy.typing.NDArray[Any]":
        """The oldest item, copied out of its slot (the slot is freed at once)."""
        with self.get(timeout) as item:
            return item.copy()

    def get_nowait(self) -> "numpy.typing.NDArray[Any]":
        return self.get_copy(timeout=0)

    def _checked_view(self, addr, nbytes, dtype, shape):
        import numpy

        try:
            stored = numpy.dtype(dtype)
            _check_storable(stored)
            if _array_bytes(shape, stored) != nbytes:
                raise ValueError(f"{shape} x {stored} is not {nbytes} bytes")
        except (TypeError, ValueError) as error:
            raise CorruptBookkeepingError(
                f"an item of queue {self.name!r} is recorded as {shape} x {dtype!r}: {error}",
                self._region.name) from None
        return self._view(addr, stored, shape)

    def _view(self, addr, dtype, shape):
        import numpy

        count = _array_bytes(shape, dtype) // dtype.itemsize
        view = numpy.frombuffer(self._region.buf, dtype=dtype, count=count,
                                offset=addr - self._region.addr)
        return view.reshape(shape)
