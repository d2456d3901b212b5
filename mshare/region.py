"""``Region``: one process's handle on a named region."""

import math
import os
import stat
import weakref
from typing import TYPE_CHECKING, Any, Optional

from mshare import attachments, pagetables
from mshare._core import PAGE_SIZE, MappedBuffer
from mshare._shared import Bookkeeping
from mshare.errors import CorruptEntryError
from mshare.managed import ManagedMemory

if TYPE_CHECKING:
    import numpy
    import numpy.typing

    from mshare.attachments import Attachment


class _AttachedBuffer(MappedBuffer):
    """``MappedBuffer`` that keeps its attachment (the mapping's table entry and attach
    mark) alive for as long as any view of the memory is."""


def _attached_view(attachment: "Attachment", readonly: bool) -> memoryview:
    buffer = _AttachedBuffer(attachment.mapping, attachment.entry.size, readonly)
    buffer.attachment = attachment
    return memoryview(buffer)


class Region(ManagedMemory):
    """A named shared-memory region, mapped at ``addr`` in every process.

    ``buf`` is a zero-copy ``memoryview`` of exactly ``size`` bytes (read-only when
    attached with ``readonly=True``). ``close()`` releases this handle; the mapping goes
    when the last open ``Region`` over it in this process closes or is dropped. It never
    unlinks. Pickling carries the name and ``readonly``, and unpickling attaches by name
    at the same address.

    >>> with mshare.create("weights", 1 << 20) as region:
    ...     region.buf[:5] = b"hello"
    """

    def __init__(self, attachment: "Attachment", name: str, readonly: bool,
                 entry_stat: os.stat_result) -> None:
        """Made by ``create``/``attach`` with ``attachments.table_lock`` held."""
        self._attachment = attachment
        self._entry = attachment.entry
        self._registry_path = attachment.registry_path
        self._name = name
        self._readonly = readonly
        self._mode = stat.S_IMODE(entry_stat.st_mode)
        self._buf = _attached_view(attachment, readonly)
        # Slices and arrays of buf share its export of the memory, which lives exactly as
        # long as one of them (or buf) does; close() looks at it through this.
        self._exporter = weakref.ref(self._buf.obj)
        # Made at the first use of the lock, allocator or names: most handles (a pool
        # task's, say) never touch the bookkeeping area, so never fault its page in.
        self._bookkeeping_object: Optional[Bookkeeping] = None
        self._closed = False
        attachment.add_handle(self, entry_stat)

    # -- what the region is ------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def addr(self) -> int:
        """Start address: the same number in every process."""
        return self._entry.addr

    @property
    def size(self) -> int:
        """Exactly the bytes asked for at create, never rounded."""
        return self._entry.size

    @property
    def mode(self) -> int:
        return self._mode

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def page_size(self) -> int:
        """The page size the kernel really maps the region with in this process (from
        ``/proc/self/smaps``), which may differ from the one its backend asked for; once
        closed, the one recorded in the registry."""
        if self._closed:
            return self._entry.page_size
        return pagetables.page_size_of(pagetables.mapping_smaps(self.addr))

    def stats(self) -> "pagetables.RegionStats":
        """Backend, page size, bytes resident, and whether page tables are shared."""
        if self._closed:
            raise ValueError(f"region {self._name!r} is closed")
        return pagetables.region_stats(self.backend, self.addr)

    @property
    def backend(self) -> str:
        return self._entry.backend

    @property
    def created(self) -> float:
        """When the region was created (epoch seconds, as its entry records it)."""
        return self._entry.created

    @property
    def registry_path(self) -> str:
        return self._registry_path

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buf(self) -> memoryview:
        if self._closed:
            raise ValueError(f"region {self._name!r} is closed")
        return self._buf

    @property
    def _bookkeeping(self) -> Bookkeeping:
        """The lock, allocator and name table behind ``ManagedMemory``."""
        bookkeeping = self._bookkeeping_object
        if bookkeeping is None:
            with attachments.table_lock:  # so that the attachment makes only one
                if not self._closed:
                    bookkeeping = self._bookkeeping_object = self._attachment.bookkeeping()
        if self._closed:
            raise ValueError(f"region {self._name!r} is closed")
        if bookkeeping is None:
            raise CorruptEntryError(f"region {self._name!r} has no bookkeeping area", self._name)
        return bookkeeping

    # -- using it ------------------------------------------------------------------------

    def ndarray(self, dtype: "numpy.typing.DTypeLike", shape: "int | tuple[int, ...] | None" = None,
                offset: int = 0) -> "numpy.typing.NDArray[Any]":
        """A zero-copy numpy array over the region's bytes from ``offset``.

        Without ``shape`` the array is 1-D and fills the rest of the region. Writable
        unless the region is attached read-only.
        """
        import numpy

        dtype = numpy.dtype(dtype)
        if dtype.itemsize == 0:
            raise ValueError(f"dtype {dtype} has no bytes: an array needs an itemsize >= 1")
        if dtype.hasobject:
            raise TypeError("arrays of Python objects cannot live in shared memory: they hold "
                            "pointers into one process's heap")
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be int, not {type(offset).__name__}")
        if not 0 <= offset <= self.size:
            raise ValueError(f"offset {offset} is outside the region (size {self.size})")
        if shape is None:
            count = (self.size - offset) // dtype.itemsize
            shape = (count,)
        else:
            shape = (shape,) if isinstance(shape, int) else tuple(shape)
            if any(isinstance(extent, bool) or not isinstance(extent, int) or extent < 0
                   for extent in shape):
                raise ValueError(f"shape sizes must be ints >= 0, not {shape!r}")
            count = math.prod(shape)
        needed = count * dtype.itemsize
        if needed > self.size - offset:
            raise ValueError(
                f"an array of shape {shape} and dtype {dtype} needs {needed} bytes, but only "
                f"{self.size - offset} remain after offset {offset}"
            )
        return numpy.frombuffer(self.buf, dtype=dtype, count=count, offset=offset).reshape(shape)

    def populate(self) -> None:
        """Pre-fault every page now (``MADV_POPULATE_*``, the GIL released)."""
        # Touching (on kernels without MADV_POPULATE_*) steps by the page size the page
        # tables use, which for transparent huge pages is 4 KiB until they are assembled.
        attachment = self._attachment
        if attachment is None:
            raise ValueError(f"region {self._name!r} is closed")
        kernel_page_size = pagetables.mapping_smaps(self.addr).get("KernelPageSize", PAGE_SIZE)
        # A view held for the duration makes a close() from another thread refuse
        # (BufferError) instead of unmapping under the kernel's page walk.
        with _attached_view(attachment, True):
            attachment.mapping.populate(kernel_page_size, write=not self._readonly)

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Release this handle; idempotent. Whatever other handles do, a closed one holds
        nothing; the last open handle in the process unmaps the region.

        Raises ``BufferError`` (and stays open) while numpy arrays or memoryviews made
        from this handle's ``buf`` are alive, because unmapping under them would crash the
        process; ``RuntimeError`` when it is the last handle and this process holds the
        lock. Views made through handles that were dropped unclosed keep the mapping
        until they go.
        """
        if attachments.dropped:
            attachments.release_pending()
        with attachments.table_lock:
            if self._closed:
                return
            attachment = self._attachment
            last = attachment.open_handles() == [self]
            if last:
                attachment.check_lock_released()
            try:
                self._buf.release()
            except BufferError:
                raise self._views_alive() from None
            exporter = self._exporter()
            if exporter is not None:
                self._buf = memoryview(exporter)
                raise self._views_alive()
            # Views made through handles already dropped (or a populate() running in
            # another thread) keep the memory: then the mapping goes with the last of them.
            last = last and not attachment.mapping.exports
            attachment.remove_handle(self)
            self._closed = True
            self._attachment = self._bookkeeping_object = self._lock_forever = None
            if last:
                attachment.detach()
        if last:
            # Outside table_lock: it takes the registry lock, which an attach that raced a
            # change takes before table_lock.
            attachments.release_pending()

    def _views_alive(self):
        return BufferError(
            f"region {self._name!r} cannot be closed: arrays, memoryviews or slices made from "
            "its buf are still alive; delete them (or call .release()) first")

    def __enter__(self) -> "Region":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self._readonly else "read-write")
        return (
            f"<mshare.Region {self._name!r} addr={self.addr:#x} size={self.size} "
            f"backend={self.backend} {state}>"
        )
