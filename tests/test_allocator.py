"""region.alloc()/free(): invariants under random workloads, exhaustion, bad frees, crashes."""

import ctypes
import multiprocessing
import os
import random
import signal
import time

import numpy  # noqa: F401  (imported here so short-lived forked children need not)
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle, RuleBasedStateMachine, consumes, invariant, multiple, rule,
    run_state_machine_as_test,
)

import mshare

ARENA = 256 << 10
HEADER = 16


def fill(addr, nbytes, byte):
    ctypes.memset(addr, byte, nbytes)


def holds(addr, nbytes, byte):
    return nbytes == 0 or ctypes.string_at(addr, nbytes) == bytes([byte]) * nbytes


class Heap(RuleBasedStateMachine):
    """One process's random alloc/free sequence, checked against a model of live blocks."""

    region = None  # set by the test: one region serves every generated sequence
    blocks = Bundle("blocks")

    def __init__(self):
        super().__init__()
        self.live = {}  # addr -> (nbytes, fill byte)
        self.freed = set()

    @rule(target=blocks,
          nbytes=st.one_of(st.integers(0, 300), st.integers(0, 40_000)),
          align=st.sampled_from([1, 8, 16, 64, 256, 4096]))
    def allocate(self, nbytes, align):
        try:
            addr = self.region.alloc(nbytes, align)
        except mshare.RegionFullError:
            stats = self.region._bookkeeping.verify()
            # Refused only when no free block could hold it, even at the best alignment.
            assert stats["largest_free"] < nbytes + HEADER + align + 48
            return multiple()
        region = self.region
        assert addr % align == 0
        assert region.addr <= addr and addr + nbytes <= region.addr + region.size
        for other, (size, _) in self.live.items():
            assert addr + nbytes <= other or other + size <= addr, "blocks overlap"
        byte = len(self.live) % 251 + 1
        fill(addr, nbytes, byte)
        self.live[addr] = (nbytes, byte)
        self.freed.discard(addr)
        return addr

    @rule(addr=consumes(blocks))
    def release(self, addr):
        nbytes, byte = self.live.pop(addr)
        assert holds(addr, nbytes, byte), "the allocator wrote into a live block"
        self.region.free(addr)
        self.freed.add(addr)

    @rule(data=st.data())
    def double_free_is_refused(self, data):
        if self.freed:
            addr = data.draw(st.sampled_from(sorted(self.freed)))
            with pytest.raises(ValueError):
                self.region.free(addr)

    @invariant()
    def heap_is_consistent(self):
        stats = self.region._bookkeeping.verify()
        assert stats["used_blocks"] == len(self.live)

    def teardown(self):
        for addr, (nbytes, byte) in self.live.items():
            assert holds(addr, nbytes, byte)
            self.region.free(addr)
        stats = self.region._bookkeeping.verify()
        assert stats["free_blocks"] == 1 and stats["free_bytes"] == ARENA


def test_random_workload_keeps_every_invariant(registry_path, name):
    Heap.region = mshare.create(name, ARENA)
    try:
        run_state_machine_as_test(
            Heap, settings=settings(max_examples=60, stateful_step_count=40, deadline=None))
    finally:
        Heap.region.close()
        Heap.region = None
        mshare.unlink(name)


def _churn(region, seed, rounds, failures):
    """Random alloc/free from one process; every block carries this worker's byte."""
    rng = random.Random(seed)
    byte = seed % 250 + 1
    live = []
    for _ in range(rounds):
        if live and (rng.random() < 0.45 or len(live) > 60):
            addr, nbytes = live.pop(rng.randrange(len(live)))
            if not holds(addr, nbytes, byte):
                failures.put(f"block 0x{addr:x} of worker {seed} was overwritten")
            region.free(addr)
            continue
        nbytes, align = rng.randrange(1, 3000), rng.choice([8, 16, 64, 512])
        try:
            addr = region.alloc(nbytes, align)
        except mshare.RegionFullError:
            continue
        if addr % align or not region.addr <= addr <= region.addr + region.size - nbytes:
            failures.put(f"bad block 0x{addr:x} for {nbytes} bytes aligned to {align}")
        fill(addr, nbytes, byte)
        live.append((addr, nbytes))
    for addr, nbytes in live:
        if not holds(addr, nbytes, byte):
            failures.put(f"block 0x{addr:x} of worker {seed} was overwritten")
        region.free(addr)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_concurrent_workload_from_several_processes(registry_path, name, method):
    region = mshare.create(name, ARENA)
    context = multiprocessing.get_context(method)
    failures = context.Queue()
    workers = [context.Process(target=_churn, args=(region, seed, 3000, failures))
               for seed in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert failures.empty(), failures.get()
    stats = region._bookkeeping.verify()
    assert (stats["used_blocks"], stats["free_blocks"], stats["free_bytes"]) == (0, 1, ARENA)
    region.close()
    mshare.unlink(name)


def test_exhaustion_is_a_clean_error_and_freeing_restores_everything(registry_path, name):
    region = mshare.create(name, ARENA)
    blocks = []
    with pytest.raises(mshare.RegionFullError) as raised:
        while True:
            blocks.append(region.alloc(1000, 16))  # 1024 bytes with the header
    assert isinstance(raised.value, MemoryError)
    assert "no free block is large enough" in str(raised.value)
    assert len(blocks) == ARENA // 1024
    region._bookkeeping.verify()
    for addr in blocks[::2] + blocks[1::2]:  # fragment first, then coalesce
        region.free(addr)
    largest = region.alloc(ARENA - HEADER, 16)  # the whole arena in one block
    assert largest == region.addr + HEADER
    with pytest.raises(mshare.RegionFullError):
        region.alloc(1)
    region.free(largest)
    with pytest.raises(mshare.RegionFullError):
        region.alloc(ARENA - HEADER + 1, 16)
    with pytest.raises(mshare.RegionFullError):
        region.alloc(1 << 40)
    assert region._bookkeeping.verify()["free_bytes"] == ARENA
    region.close()
    mshare.unlink(name)


def test_bad_frees_and_requests_are_refused_without_damage(registry_path, name):
    region = mshare.create(name, ARENA)
    addr = region.alloc(100)
    named = region.array("named", (4,), "int32")
    for bogus in (addr + 8, addr - 64, region.addr, region.addr - 4096,
                  region.addr + region.size + 64, 1, 0, -5, 1 << 70):
        with pytest.raises(ValueError):
            region.free(bogus)
    with pytest.raises(ValueError, match="named object"):
        region.free(named.__array_interface__["data"][0])
    region.free(addr)
    with pytest.raises(ValueError, match="already freed"):
        region.free(addr)
    for call, error in [((-1,), ValueError), ((10, 3), ValueError), ((10, 0), ValueError),
                        ((10, 1 << 31), ValueError), (("10",), TypeError), ((True,), TypeError)]:
        with pytest.raises(error):
            region.alloc(*call)
    with pytest.raises(TypeError):
        region.free("0x10")
    stats = region._bookkeeping.verify()
    assert stats["used_blocks"] == 1 and stats["names"] == 1
    del named
    region.close()
    with mshare.attach(name, readonly=True) as reader:
        with pytest.raises(PermissionError):
            reader.alloc(10)
        with pytest.raises(PermissionError):
            reader.free(addr)
    mshare.unlink(name)


def test_raw_users_see_zeroed_bytes_and_the_bookkeeping_outside_buf(registry_path, name):
    with mshare.create(name, 5000) as region:
        assert len(region.buf) == 5000
        assert bytes(region.buf) == bytes(5000)
        with region.lock():  # the lock lives beyond buf: buf stays untouched
            pass
        assert bytes(region.buf) == bytes(5000)
        addr = region.alloc(100)
        assert region.addr < addr < region.addr + 5000
    mshare.unlink(name)


def _resident_bytes(addr):
    """``Rss`` of this process's mapping starting at ``addr``, read from the kernel."""
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                inside = int(head.split("-")[0], 16) == addr
            elif inside and head == "Rss:":
                return int(line.split()[1]) << 10
    raise AssertionError(f"no mapping starts at {addr:#x}")


def test_a_new_region_maps_in_only_the_head_of_its_bookkeeping(registry_path, name):
    # The data object is born zero-filled, so create writes the lock and allocator words
    # and leaves the name table's pages alone: clearing them would fault a dozen in.
    with mshare.create(name, 1 << 20, hugepages="off") as region:
        assert _resident_bytes(region.addr) <= 4 * 4096
        array = region.array("first", (4,), "int64")  # the name table works untouched
        array[:] = 7
        assert list(region.array("first")) == [7, 7, 7, 7]
        del array
    mshare.unlink(name)


def _churn_forever(region, ready):
    ready.set()
    while True:
        for _ in range(5):
            addr = region.alloc(64)
            region.free(addr)
        region.array("churn", (8,), "int64")
        region.delete("churn")


def test_killing_processes_mid_operation_never_breaks_the_heap(registry_path, name):
    region = mshare.create(name, ARENA)
    keep = region.alloc(5000)
    fill(keep, 5000, 7)
    context = multiprocessing.get_context("fork")
    rng = random.Random(6)
    for attempt in range(200):
        ready = context.Event()
        child = context.Process(target=_churn_forever, args=(region, ready))
        child.start()
        assert ready.wait(10)
        time.sleep(rng.uniform(0, 0.004))
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        stats = region._bookkeeping.verify()  # repairs first if the child died mid-change
        # Each child holds at most one block and one name; both may leak when it dies
        # between calls, never more, and the table never keeps a half-made entry.
        assert stats["used_blocks"] <= 1 + 2 + attempt
        assert region.names() in ([], ["churn"])
        if "churn" in region.names():
            region.delete("churn")
        if stats["repairs"] >= 5 and attempt >= 20:
            break
    assert stats["repairs"] >= 1, "no kill landed inside an allocator change"
    assert holds(keep, 5000, 7)
    region.free(keep)
    region.close()
    mshare.unlink(name)
