"""A drop-in for ``multiprocessing.shared_memory`` whose blocks are mshare regions.

>>> from mshare import shared_memory          # was: from multiprocessing import shared_memory
>>> shm = shared_memory.SharedMemory(create=True, size=1 << 20)
>>> shm.buf[:5] = b"hello"
>>> shm.close(); shm.unlink()

The calls, errors, names, pickling and ``repr`` are the stdlib's. What differs (all in
``docs/shared_memory.md``): a block is mapped at the same address in every process
(``addr``), ``size`` is exactly what was asked for, ``mode=``/``hugepages=``/``readonly=``
pass through to mshare, ``track`` never lets an attacher unlink (gh-82300), and
``close()`` refuses while views of ``buf`` are alive instead of leaving a broken block.
"""

import os
import secrets
import types
from functools import partial
from multiprocessing import managers
from multiprocessing.managers import dispatch
from typing import Any, Callable, Final, Iterable, List, Optional, Protocol, Tuple, TypeVar

import mshare
from mshare import _shared_memory_tracker
from mshare._shareable_list import ShareableListLayout
from mshare.names import validate_name

__all__ = ["SharedMemory", "ShareableList", "SharedMemoryManager"]

# The stdlib's names for how generated names look; its own tests patch _make_filename.
_USE_POSIX: Final = True
_O_CREX: Final = os.O_CREAT | os.O_EXCL
_SHM_SAFE_NAME_LENGTH: Final = 14
_SHM_NAME_PREFIX: Final = "/psm_"
_Made = TypeVar("_Made", "SharedMemory", "ShareableList")


def _make_filename() -> str:
    """A random stdlib-style name (``/psm_`` and 8 hex digits) for a new block."""
    return _SHM_NAME_PREFIX + secrets.token_hex((_SHM_SAFE_NAME_LENGTH - len(_SHM_NAME_PREFIX)) // 2)


def region_name(block_name: str) -> str:
    """The mshare region behind a stdlib-style block name: leading slashes dropped, as
    ``shm_open`` drops them, so ``"/psm_1a2b"`` and ``"psm_1a2b"`` are one block. The rest
    must be a valid region name (no ``/`` or NUL, not starting with ``.``)."""
    return validate_name(block_name.lstrip("/"))


class SharedMemory:
    """A shared memory block, created or attached by name; an mshare region underneath.

    ``name=None`` with ``create=True`` generates a ``psm_``-style name. ``size`` is exact
    on create and ignored on attach. Keyword-only extras: ``mode`` (permission bits,
    default 0o600 like the stdlib), ``hugepages`` (``"auto"``, ``"hugetlb"``, ``"thp"``,
    ``"off"``), ``readonly`` (attach ``PROT_READ``). ``track=True`` has the block unlinked
    when the program that created it ends without unlinking it; attachers never unlink.
    """

    _name: Optional[str] = None
    _region: Optional[mshare.Region] = None
    _size: int = 0
    _addr: Optional[int] = None
    _readonly: bool = False
    _tracked: Optional[Tuple[str, str, int, float]] = None
    _flags: int = os.O_RDWR
    _mode: int = 0o600
    _prepend_leading_slash: bool = True

    def __init__(self, name: Optional[str] = None, create: bool = False, size: int = 0, *,
                 track: bool = True, mode: Optional[int] = None, hugepages: str = "auto",
                 readonly: bool = False) -> None:
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create:
            self._flags = _O_CREX | os.O_RDWR
            if size == 0:
                raise ValueError("'size' must be a positive number different from zero")
        if name is None and not self._flags & os.O_EXCL:
            raise ValueError("'name' can only be None if create=True")
        if create and readonly:
            raise ValueError("a block is created writable; attach it with readonly=True")
        if not create and mode is not None:
            raise ValueError("mode= applies when creating a block, not when attaching one")
        if create:
            mode = self._mode if mode is None else mode
            if track and isinstance(mode, int) and not mode & 0o400:
                # The tracker reads the block's entry to be sure it unlinks the right one.
                raise ValueError(f"track=True needs a mode the owner can read, not {mode:#o}; "
                                 "pass track=False to manage the block's lifetime yourself")
            self._region = self._create(name, size, mode, hugepages)
            if track:
                self._register()
        else:
            self._name = self._full_name(name)
            self._region = mshare.attach(region_name(self._name), readonly=readonly)
        self._readonly = readonly
        self._size = self._region.size
        self._addr = self._region.addr

    def _create(self, name: Optional[str], size: int, mode: int, hugepages: str) -> mshare.Region:
        if name is not None:
            self._name = self._full_name(name)
            return mshare.create(region_name(self._name), size, mode=mode, hugepages=hugepages)
        while True:
            candidate = _make_filename()
            try:
                region = mshare.create(region_name(candidate), size, mode=mode,
                                       hugepages=hugepages)
            except FileExistsError:
                continue
            self._name = candidate
            return region

    def _full_name(self, name: str) -> str:
        """The name as the stdlib keeps it in ``_name``: with the ``/`` ``shm_open`` wants."""
        return "/" + name if self._prepend_leading_slash else name

    def _register(self) -> None:
        region = self._region
        try:
            identity = (region.name, region.registry_path, region.addr, region.created)
            _shared_memory_tracker.register(*identity)
        except BaseException:
            region.close()
            mshare.unlink(region.name)
            raise
        self._tracked = identity

    def __del__(self) -> None:
        # Never raise here: with views still alive the region's own finalizer unmaps the
        # memory once the last of them is gone.
        try:
            self.close()
        except Exception:
            pass

    def __reduce__(self) -> Tuple[Callable[..., "SharedMemory"], Tuple[str, bool, int]]:
        if self._readonly:
            return partial(self.__class__, readonly=True), (self.name, False, self.size)
        return self.__class__, (self.name, False, self.size)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"

    @property
    def buf(self) -> memoryview:
        """A memoryview of exactly ``size`` bytes; ``None`` once closed (typed as the
        stdlib's is, so that code written for it checks unchanged)."""
        # Asked of the region each time: a refused close() gives the region a new one.
        return None if self._region is None else self._region.buf  # type: ignore[return-value]

    @property
    def name(self) -> str:
        """The block's name, as other processes pass it to attach."""
        reported_name = self._name
        if self._prepend_leading_slash and reported_name.startswith("/"):
            reported_name = reported_name[1:]
        return reported_name

    @property
    def size(self) -> int:
        """Exactly the bytes asked for at create (never rounded up to pages)."""
        return self._size

    @property
    def addr(self) -> int:
        """The block's start address: the same number in every process."""
        return self._addr

    @property
    def region(self) -> Optional[mshare.Region]:
        """The ``mshare.Region`` underneath (``None`` once closed)."""
        return self._region

    def close(self) -> None:
        """Release this handle; the block lives on until unlinked.

        Raises ``BufferError`` naming what to release, and stays open, while arrays or
        memoryviews made from ``buf`` are alive: unmapping under them would crash.
        """
        if self._region is None:
            return
        self._region.close()
        self._region = None

    def unlink(self) -> None:
        """Remove the block's name; mappings stay valid until closed.

        Call it once across all handles; a second call raises ``FileNotFoundError``.
        """
        mshare.unlink(region_name(self._name))
        if self._tracked is not None:
            identity, self._tracked = self._tracked, None
            _shared_memory_tracker.unregister(*identity)


class ShareableList(ShareableListLayout[SharedMemory]):
    """A fixed-length list of ``int``, ``float``, ``bool``, ``str``, ``bytes`` and ``None``
    stored in a ``SharedMemory`` block, with the stdlib's format, errors and pickling.

    ``ShareableList(sequence)`` creates a block (``name=`` names it), ``ShareableList(
    name=...)`` attaches one; keyword-only ``block_options`` (``mode``, ``hugepages``,
    ``track``, ...) go to ``SharedMemory``.
    """

    _block_class = SharedMemory

    def __reduce__(self) -> Tuple[Callable[[], "ShareableList"], Tuple[()]]:
        return partial(self.__class__, name=self.shm.name), ()

    def __class_getitem__(cls, item: Any) -> types.GenericAlias:
        """``ShareableList[int]`` in annotations, as the stdlib's allows."""
        return types.GenericAlias(cls, item)


class _SegmentTracker(Protocol):
    """What the manager server keeps of its blocks (the stdlib's tracker has no types)."""

    shared_memory_context_name: str
    segment_names: List[str]

    def register_segment(self, segment_name: str) -> None: ...
    def destroy_segment(self, segment_name: str) -> None: ...
    def unlink(self) -> None: ...


class _BlockTracker(managers._SharedMemoryTracker):
    """The manager server's list of blocks, unlinked as mshare blocks at shutdown."""

    def destroy_segment(self, segment_name: str) -> None:
        self.segment_names.remove(segment_name)
        block = SharedMemory(segment_name)
        block.close()
        block.unlink()


class SharedMemoryServer(managers.SharedMemoryServer):
    """The stdlib's server, unlinking mshare blocks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A fresh list: the stdlib tracker's default list is shared between instances.
        self.shared_memory_context: _SegmentTracker = _BlockTracker(
            self.shared_memory_context.shared_memory_context_name, [])


class SharedMemoryManager(managers.SharedMemoryManager):
    """``multiprocessing.managers.SharedMemoryManager`` handing out mshare blocks, all
    unlinked when the manager shuts down.

    >>> with SharedMemoryManager() as manager:
    ...     block = manager.SharedMemory(size=128)
    ...     numbers = manager.ShareableList(range(10))
    """

    _Server = SharedMemoryServer

    def SharedMemory(self, size: int) -> SharedMemory:
        """A new block of ``size`` bytes, unlinked when the manager shuts down."""
        return self._tracked_by_server(partial(SharedMemory, None, create=True, size=size))

    def ShareableList(self, sequence: Iterable[Any]) -> ShareableList:
        """A new ``ShareableList`` of ``sequence``, unlinked when the manager shuts down."""
        return self._tracked_by_server(partial(ShareableList, sequence))

    def _tracked_by_server(self, make: Callable[[], _Made]) -> _Made:
        with self._Client(self._address, authkey=self._authkey) as connection:
            made = make()
            block = made.shm if isinstance(made, ShareableList) else made
            try:
                dispatch(connection, None, "track_segment", (block.name,))
            except BaseException:
                block.unlink()
                raise
        return made
