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
from typing import TYPE_CHECKING, Any, Optional, Protocol

from mshare._queue import HEADER_BYTES, QUEUE_KIND, SlotRing, slot_stride
from mshare._waiting import KINDS
from mshare.errors import CorruptBookkeepingError

if TYPE_CHECKING:
    import numpy
    import numpy.typing

    from mshare._shared import Bookkeeping


class _Region(Protocol):
    """What a queue uses of its region (a ``mshare.Region``; named here without importing
    it, which imports this module)."""

    @property
    def name(self) -> str: ...
    @property
    def addr(self) -> int: ...
    @property
    def buf(self) -> memoryview: ...
    def _writable(self, what: str) -> "Bookkeeping": ...


def find_or_create(region: _Region, name: str, slots: Optional[int],
                   slot_size: Optional[int]) -> "Queue":
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
        return Queue.over_block(bookkeeping, region, name, addr, nbytes, slots, slot_size)
    found = bookkeeping.find_named(name)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, f"no queue named {name!r}", region.name)
    addr, nbytes, kind, shape = found
    if kind != QUEUE_KIND:
        raise TypeError(f"{name!r} is a named {KINDS.get(kind, 'array')}, not a queue")
    if len(shape) != 2:
        raise CorruptBookkeepingError(f"the queue {name!r} is recorded without its sizes",
                                      region.name)
    return Queue.over_block(bookkeeping, region, name, addr, nbytes, *shape)


class Queue(SlotRing):
    """A named queue of ``slots`` slots of ``slot_size`` bytes; many producers, many
    consumers, FIFO per producer. See the module docstring. ``put``, ``reserve`` and
    ``get`` are compiled (``SlotRing``), so no Python code runs in them: it would run cold
    in a process just woken for an item, and add to every item's latency."""

    def __repr__(self) -> str:
        return (f"<mshare queue {self.name!r}: {self.slots} slots of {self.slot_size} bytes "
                f"in {self.region_name!r}>")

    def put_nowait(self, data: "numpy.typing.ArrayLike") -> None:
        self.put(data, timeout=0)

    def get_copy(self, timeout: Optional[float] = None) -> "numpy.typing.NDArray[Any]":
        """The oldest item, copied out of its slot (the slot is freed at once)."""
        with self.get(timeout) as item:
            return item.copy()

    def get_nowait(self) -> "numpy.typing.NDArray[Any]":
        return self.get_copy(timeout=0)
