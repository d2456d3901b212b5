# pyright: strict
"""A user's program that touches the whole public API, for the type checkers: mypy
``--strict`` (tests/test_typing.py) must find nothing to complain about. It also runs."""

import os
import tempfile
import uuid
from typing import List

import numpy as np
import numpy.typing as npt

import mshare
import mshare.ray
from mshare.queues import Queue
from mshare.shared_memory import ShareableList, SharedMemory, SharedMemoryManager


def regions(name: str) -> List[str]:
    with mshare.create(name, 1 << 20, mode=0o640, hugepages="off") as region:
        address: int = region.addr
        size: int = region.size
        assert region.buf[:4].nbytes == 4 and not region.readonly and not region.closed
        counter = region.array("counter", (1,), np.int64)
        with region.lock(timeout=5):
            counter[0] += 1
        block: int = region.alloc(64)
        region.free(block)
        view: npt.NDArray[np.uint8] = region.ndarray(np.uint8, (16,), offset=0)
        ready = region.event("ready")
        ready.set()
        assert ready.wait(timeout=1) and ready.is_set()
        items = region.condition("items")
        with region.lock():
            items.notify_all()
        frames: Queue = region.queue("frames", 4, 4096)
        frames.put(np.arange(4, dtype=np.int32))
        received: npt.NDArray[np.int32] = frames.get_copy(timeout=1)
        kinds = region.objects()
        names: List[str] = region.names()
        region.delete("counter")
        region.populate()
        stats = region.stats()
        print(address, size, view.nbytes, received.sum(), kinds, names, stats.page_size,
              region.backend, region.page_size, region.mode, region.registry_path)
        del counter, view  # views of the region must go before it closes
    with mshare.attach(name, readonly=True) as again:
        print(again.name)
    found = mshare.info(name)
    listed = [entry.name for entry in mshare.list() if isinstance(entry, mshare.RegionInfo)]
    unreadable = [entry.status for entry in mshare.list_regions()
                  if isinstance(entry, mshare.UnreadableRegion)]
    print(found.addr + found.size, found.backend, found.attached, unreadable)
    mshare.unlink(name)
    report = mshare.gc(dry_run=True)
    print([finding.reason for finding in report.removed + report.kept])
    system: int = mshare.pagetable_stats().system
    print(system)
    return listed


def errors(name: str) -> None:
    try:
        mshare.attach(name)
    except FileNotFoundError as error:
        print(error.filename)
    except (mshare.MshareError, mshare.RegionFullError, mshare.OwnerDiedError,
            mshare.CorruptEntryError, mshare.CorruptBookkeepingError,
            mshare.AddressConflictError, mshare.HugePagesUnavailableError,
            mshare.UnsafeRegistryError) as error:
        print(error)


def drop_in() -> None:
    block = SharedMemory(create=True, size=4096)
    try:
        block.buf[0] = 1
        print(block.name, block.size)
    finally:
        block.close()
        block.unlink()
    with SharedMemoryManager() as manager:
        numbers: ShareableList = manager.ShareableList([1, 2.5, "three"])
        print(numbers[0], len(numbers))


def on_ray(name: str) -> None:
    region = mshare.ray.attach(name, 1 << 20)
    print(region.addr, mshare.ray.region_name(name), mshare.ray.nodes(name))
    print(mshare.ray.info(name).size, mshare.ray.stats(name), mshare.ray.ensure(name, 1 << 20))
    mshare.ray.destroy(name, all_nodes=True)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="mshare-typing-") as root:
        os.environ["MSHARE_ROOT"] = root
        print(regions(f"typing-{uuid.uuid4().hex[:8]}"))
        errors("no-such-region")
        drop_in()
