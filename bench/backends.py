"""mshare and its peers behind one small interface, so every figure runs the same code for each.

A `Backend` creates, attaches and unlinks a named region; a `Handle` is one process's
mapping of it (`buf`, `array()`, `page_size`, `addr`, `close()`). Names given to a backend
are bare (`bench-123-4`); each backend adds what its library wants (`/`, `shm://`).
"""

from __future__ import annotations

import inspect
import mmap
import os
import sys
from multiprocessing import resource_tracker, shared_memory

import numpy

MSHARE_MODES = ("shm", "thp", "hugetlb")
PEERS = ("shared_memory", "posix_ipc", "SharedArray")
# Measured against the stdlib class only (bench/test_bench_shared_memory.py), not in every figure.
DROP_IN = "mshare.shared_memory"


class Handle:
    """One mapping of a region in this process."""

    def __init__(self, buf: memoryview, page_size, closer, owner=None):
        self.buf = buf
        # An int, or a function asked on first use: mshare reads the real page size from
        # /proc/self/smaps, a diagnostic no user's attach pays, so no timing may include it.
        self._page_size = page_size
        self._closer = closer
        self._owner = owner

    @property
    def page_size(self) -> int:
        if callable(self._page_size):
            self._page_size = self._page_size()
        return self._page_size

    @property
    def addr(self) -> int:
        return numpy.frombuffer(self.buf, numpy.uint8).__array_interface__["data"][0]

    def array(self, dtype=numpy.uint8) -> numpy.ndarray:
        """A zero-copy view; drop it before `close()` (the libraries refuse to unmap under it)."""
        return numpy.frombuffer(self.buf, dtype, count=len(self.buf) // numpy.dtype(dtype).itemsize)

    def close(self) -> None:
        self.buf.release()
        self._closer()


def touch(handle: Handle) -> int:
    """Read and write one byte in every page, at the page size the kernel maps; return pages."""
    pages = handle.array()[:: handle.page_size]
    numpy.add(pages, 1, out=pages)
    return len(pages)


class Backend:
    name: str
    family: str  # "mshare" or "peer": ratios compare one family against the other

    def load(self) -> None:
        """Import the library now, so no figure counts an import as part of an attach."""

    def unavailable(self, size: int) -> str | None:
        """Why this backend cannot hold a region of `size` here, or None if it can."""
        return None

    def create(self, name: str, size: int) -> Handle:
        raise NotImplementedError

    def attach(self, name: str) -> Handle:
        raise NotImplementedError

    def unlink(self, name: str) -> None:
        raise NotImplementedError


def _mshare_accepts_hugepages() -> bool:
    import mshare

    return "hugepages" in inspect.signature(mshare.create).parameters


class MshareBackend(Backend):
    family = "mshare"

    def __init__(self, mode: str):
        self.mode = mode
        self.name = f"mshare-{mode}"

    def load(self):
        import mshare  # noqa: F401

    def _create_options(self) -> dict:
        # Before huge-page support the core only has "shm"; it takes no `hugepages=`.
        if self.mode == "shm":
            return {"hugepages": "off"} if _mshare_accepts_hugepages() else {}
        return {"hugepages": self.mode}

    def unavailable(self, size: int) -> str | None:
        try:
            import mshare
        except ImportError as error:
            return f"mshare is not importable ({error}); build it in place first"
        if self.mode != "shm" and not _mshare_accepts_hugepages():
            return "this mshare has no huge-page backends (create() takes no hugepages=)"
        # The backend's own error says exactly what is missing and how to fix it.
        probe = f"bench-probe-{os.getpid()}-{self.mode}"
        try:
            region = mshare.create(probe, size, **self._create_options())
        except (OSError, ValueError) as error:
            return f"{self.name} cannot hold {size} bytes: {error}"
        try:
            if region.backend != self.mode:
                return f"asked for {self.mode}, mshare gave {region.backend}"
        finally:
            region.close()
            mshare.unlink(probe)
        return None

    def _handle(self, region) -> Handle:
        return Handle(region.buf, lambda: region.page_size, region.close, owner=region)

    def create(self, name, size):
        import mshare

        return self._handle(mshare.create(name, size, **self._create_options()))

    def attach(self, name):
        import mshare

        return self._handle(mshare.attach(name))

    def unlink(self, name):
        import mshare

        mshare.unlink(name)


class SharedMemoryBackend(Backend):
    """`multiprocessing.shared_memory`, as most Python code shares memory today."""

    name = "shared_memory"
    family = "peer"

    def _handle(self, block) -> Handle:
        return Handle(block.buf, mmap.PAGESIZE, block.close, owner=block)

    def create(self, name, size):
        return self._handle(shared_memory.SharedMemory(name, create=True, size=size))

    def attach(self, name):
        # Without this the resource tracker of every attaching process unlinks the block
        # when that process exits (gh-82300); 3.13 added track=False for it. Skipping the
        # tracker also spares the peer the cost of starting a tracker process.
        if sys.version_info >= (3, 13):
            return self._handle(shared_memory.SharedMemory(name, track=False))
        register = resource_tracker.register
        resource_tracker.register = lambda *args: None
        try:
            return self._handle(shared_memory.SharedMemory(name))
        finally:
            resource_tracker.register = register

    def unlink(self, name):
        block = shared_memory.SharedMemory(name)
        block.close()
        block.unlink()


class DropInBackend(Backend):
    """`mshare.shared_memory`: the stdlib's class, as a program calls it after changing
    one import, on mshare regions (huge pages as `hugepages="auto"` picks them, blocks
    tracked as `track=True` does by default)."""

    name = "mshare.shared_memory"
    family = "mshare"

    def __init__(self):
        self._created = {}

    def load(self):
        from mshare import shared_memory  # noqa: F401

    def unavailable(self, size):
        try:
            from mshare import shared_memory  # noqa: F401
        except ImportError as error:
            return f"mshare.shared_memory is not importable ({error})"
        return None

    def _handle(self, block) -> Handle:
        return Handle(block.buf, lambda: block.region.page_size, block.close, owner=block)

    def create(self, name, size):
        from mshare import shared_memory

        block = shared_memory.SharedMemory(name, create=True, size=size)
        self._created[name] = block
        return self._handle(block)

    def attach(self, name):
        from mshare import shared_memory

        return self._handle(shared_memory.SharedMemory(name))

    def unlink(self, name):
        from mshare import shared_memory

        # Through the creating handle, as a program would: that also tells its tracker.
        block = self._created.pop(name, None) or shared_memory.SharedMemory(name)
        block.close()
        block.unlink()


class PosixIpcBackend(Backend):
    """`posix_ipc.SharedMemory` mapped with `mmap`, the usual pairing."""

    name = "posix_ipc"
    family = "peer"

    def load(self):
        import posix_ipc  # noqa: F401

    def _map(self, memory) -> Handle:
        mapping = mmap.mmap(memory.fd, memory.size)
        memory.close_fd()
        return Handle(memoryview(mapping), mmap.PAGESIZE, mapping.close, owner=mapping)

    def create(self, name, size):
        import posix_ipc

        return self._map(posix_ipc.SharedMemory(f"/{name}", posix_ipc.O_CREX, size=size))

    def attach(self, name):
        import posix_ipc

        return self._map(posix_ipc.SharedMemory(f"/{name}"))

    def unlink(self, name):
        import posix_ipc

        posix_ipc.unlink_shared_memory(f"/{name}")


class SharedArrayBackend(Backend):
    """`SharedArray`: numpy arrays by name, with its metadata inside the segment."""

    name = "SharedArray"
    family = "peer"

    def load(self):
        import SharedArray  # noqa: F401

    def _handle(self, array) -> Handle:
        # SharedArray unmaps when the array object is collected, so the handle keeps it.
        def drop():
            handle._owner = None

        handle = Handle(memoryview(array).cast("B"), mmap.PAGESIZE, drop, owner=array)
        return handle

    def create(self, name, size):
        import SharedArray

        return self._handle(SharedArray.create(f"shm://{name}", size, numpy.uint8))

    def attach(self, name):
        import SharedArray

        return self._handle(SharedArray.attach(f"shm://{name}"))

    def unlink(self, name):
        import SharedArray

        SharedArray.delete(f"shm://{name}")


def all_backends() -> list[Backend]:
    return [MshareBackend(mode) for mode in MSHARE_MODES] + [
        SharedMemoryBackend(), PosixIpcBackend(), SharedArrayBackend()]


def by_name(name: str) -> Backend:
    for backend in all_backends() + [DropInBackend()]:
        if backend.name == name:
            return backend
    raise KeyError(name)
