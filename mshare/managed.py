"""Objects inside a region: its lock, its allocator and named numpy arrays.

``ManagedMemory`` is mixed into ``Region``; every region made by ``mshare.create`` has
them, with no extra argument. Their bookkeeping lives in a tail mapped after the user's
``size`` bytes, so ``buf`` is unchanged. The allocator, though, hands out addresses inside
``[addr, addr + size)`` and keeps a 16-byte header before each block it hands out: a
program uses a region's bytes either raw (``buf``, ``ndarray``) or through the allocator
(``alloc``, ``array``), never both.

Because the region sits at one address in every process, an address from ``alloc`` is
valid everywhere: ``ctypes`` structures allocated there can point at each other.

>>> region = mshare.create("jobs", 1 << 20)
>>> queue = region.array("queue", (1024,), "int64")      # in one process
>>> queue = region.array("queue")                        # in any other: same memory
>>> with region.lock():
...     queue[0] += 1
"""

import errno
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from mshare._shared import RegionLocking
from mshare._waiting import CONDITION_KIND, EVENT_KIND, KINDS, find_or_create
from mshare.array_shapes import _array_bytes, _check_storable, _shape, stored_dtype
from mshare.errors import CorruptBookkeepingError
from mshare.queues import find_or_create as find_or_create_queue

if TYPE_CHECKING:
    import numpy
    import numpy.typing

    from mshare._shared import Bookkeeping, RegionLock
    from mshare._waiting import Condition, Event
    from mshare.queues import Queue


class ManagedMemory(RegionLocking):
    """The lock, allocator and named arrays of a region.

    Needs ``addr``, ``size``, ``readonly``, ``name``, ``buf``, ``_closed`` and
    ``_bookkeeping`` (a ``mshare._shared.Bookkeeping``) from the class it is mixed into. Changing anything
    (``lock``, ``alloc``, ``free``, creating or deleting arrays) needs a region attached
    read-write; finding arrays works read-only too.
    """

    def alloc(self, nbytes: int, align: int = 64) -> int:
        """Allocate ``nbytes`` inside the region; return the address (valid in every process).

        ``align`` is a power of two. O(1) while a comfortably large free block exists;
        raises ``mshare.RegionFullError`` (a ``MemoryError``) when no free block can hold
        the request. Free blocks are merged as soon as they are freed.

        >>> node = Node.from_address(region.alloc(ctypes.sizeof(Node)))
        """
        return self._writable("alloc()").alloc(nbytes, align)

    def free(self, addr: int) -> None:
        """Return a block from ``alloc`` to the region.

        ``ValueError`` for an address ``alloc`` did not return, a second free, or the
        address of a named array (use ``delete``); nothing is changed then.
        """
        self._writable("free()").free(addr)

    def array(
        self, name: str, shape: Union[int, Tuple[int, ...], None] = None,
        dtype: "numpy.typing.DTypeLike" = None, *, exist_ok: bool = False,
    ) -> "numpy.typing.NDArray[Any]":
        """A named numpy array inside the region, zero copy, at one address everywhere.

        With ``shape`` it is created (zero-filled when the region is new, ``dtype``
        defaulting to float64) and ``FileExistsError`` means the name is taken, unless
        ``exist_ok`` is true and the existing array has this shape and dtype. With only
        ``name`` it is found, from any process; ``FileNotFoundError`` if absent. A
        ``dtype`` given with a name only is checked against the stored one. Names are
        1-63 bytes of UTF-8; a region holds at most 256 of them. Arrays of Python objects
        and structured dtypes cannot be named arrays.

        >>> weights = region.array("weights", (1024, 1024), "float32")   # creator
        >>> weights = region.array("weights")                            # everyone else
        """
        import numpy

        if not isinstance(exist_ok, bool):
            raise TypeError(f"exist_ok must be a bool, not {type(exist_ok).__name__}")
        if shape is None:
            found = self._bookkeeping.find_named(name)
            if found is None:
                raise FileNotFoundError(errno.ENOENT, f"no array named {name!r}", self.name)
            return self._view(name, found, dtype, None)
        dtype = numpy.dtype(float if dtype is None else dtype)
        shape = _shape(shape)
        _check_storable(dtype)
        nbytes = _array_bytes(shape, dtype)
        bookkeeping = self._writable("creating an array")
        try:
            addr = bookkeeping.create_named(name, nbytes, dtype.str, shape,
                                            max(64, dtype.alignment))
        except FileExistsError:
            found = bookkeeping.find_named(name) if exist_ok else None
            if found is None:
                raise
            return self._view(name, found, dtype, shape)
        return self._view(name, (addr, nbytes, dtype.str, shape), None, None)

    def names(self) -> List[str]:
        """Names of the region's named objects (arrays, events, conditions), sorted."""
        return self._bookkeeping.named()

    def objects(self) -> Dict[str, str]:
        """Each named object's name and kind: ``"array"``, ``"event"``, ``"condition"`` or
        ``"queue"``."""
        bookkeeping = self._bookkeeping
        kinds = {}
        for name in bookkeeping.named():
            found = bookkeeping.find_named(name)
            if found is not None:  # deleted meanwhile otherwise
                kinds[name] = KINDS.get(found[2], "array")
        return kinds

    def queue(self, name: str, slots: Optional[int] = None, slot_size: Optional[int] = None) -> "Queue":
        """The named queue ``name``: made with ``slots`` slots of ``slot_size`` bytes, found
        with the name alone (``FileNotFoundError`` if absent). See ``mshare.queues``.

        >>> frames = region.queue("frames", 8, 1 << 20)     # the creator
        >>> frames = region.queue("frames")                 # everyone else
        """
        return find_or_create_queue(self, name, slots, slot_size)

    def event(self, name: str) -> "Event":
        """The process-shared event ``name``, made (clear) if the region has none.

        Like ``threading.Event``: ``set()``, ``clear()``, ``is_set()``, and ``wait(timeout)``,
        which returns False when ``timeout`` seconds pass. Waits release the GIL, run signal
        handlers and raise ``ValueError`` when the region is closed meanwhile.

        >>> ready = region.event("ready")
        >>> ready.set()                      # in one process
        >>> ready.wait(timeout=5)            # in another: True
        """
        return find_or_create(self._writable("event()"), name, EVENT_KIND)

    def condition(self, name: str) -> "Condition":
        """The process-shared condition ``name``, made if the region has none; used with the
        region's lock, like ``threading.Condition``.

        >>> items = region.condition("items")
        >>> with region.lock():
        ...     items.wait_for(lambda: count[0] > 0, timeout=5)
        >>> with region.lock():                 # in the producer
        ...     count[0] += 1
        ...     items.notify()
        """
        return find_or_create(self._writable("condition()"), name, CONDITION_KIND)

    def delete(self, name: str) -> None:
        """Free the array ``name``; ``FileNotFoundError`` if there is none.

        The memory is reused by later allocations: views of the array still alive in any
        process then see that new data. Delete an array only once no one uses it.
        """
        self._writable("delete()").delete_named(name)

    def _writable(self, what: str) -> "Bookkeeping":
        bookkeeping = self._bookkeeping
        if self.readonly:
            raise PermissionError(errno.EACCES, f"{what} needs the region attached read-write",
                                  self.name)
        return bookkeeping

    def _view(self, name: str, found: Tuple[int, int, str, Tuple[int, ...]],
              dtype: "numpy.typing.DTypeLike", shape: Union[int, Tuple[int, ...], None],
              ) -> "numpy.typing.NDArray[Any]":
        import numpy

        addr, nbytes, stored_text, stored_shape = found
        if stored_text in KINDS:
            raise TypeError(f"{name!r} is a named {KINDS[stored_text]}, not an array")
        try:
            stored = stored_dtype(stored_text)
            _check_storable(stored)
            count = _array_bytes(stored_shape, stored) // stored.itemsize
        except (TypeError, ValueError) as error:
            raise CorruptBookkeepingError(
                f"array {name!r} is recorded as {stored_shape} x {stored_text!r}, which cannot "
                f"be an array here: {error}", self.name) from None
        if count * stored.itemsize != nbytes:
            raise CorruptBookkeepingError(
                f"array {name!r}: {stored_shape} x {stored} does not fill its {nbytes} bytes",
                self.name)
        if dtype is not None and numpy.dtype(dtype) != stored:
            raise ValueError(f"array {name!r} has dtype {stored}, not {numpy.dtype(dtype)}")
        if shape is not None and tuple(shape) != stored_shape:
            raise ValueError(f"array {name!r} has shape {stored_shape}, not {tuple(shape)}")
        view = numpy.frombuffer(self.buf, dtype=stored, count=count, offset=addr - self.addr)
        return view.reshape(stored_shape)
