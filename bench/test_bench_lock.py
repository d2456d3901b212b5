"""The region lock against multiprocessing.Lock and posix_ipc.Semaphore; the allocator.

Run: ``PYTHONPATH=. python -m pytest bench/test_bench_lock.py``. Each benchmarked call
does LOOP operations so that the harness's own overhead does not dominate.
"""

import multiprocessing
import time
import uuid

import posix_ipc
import pytest

import mshare

from conftest import RESULTS

LOOP = 10_000
CONTENDED_OPS = 20_000


@pytest.fixture
def region(registry_path):
    name = f"bench-{uuid.uuid4().hex[:8]}"
    region = mshare.create(name, 64 << 20)
    yield region
    region.close()
    mshare.unlink(name)


@pytest.fixture
def semaphore():
    semaphore = posix_ipc.Semaphore(None, posix_ipc.O_CREX, initial_value=1)
    yield semaphore
    semaphore.unlink()
    semaphore.close()


def _record(benchmark, group, contender, operations):
    RESULTS[(group, contender)] = benchmark.stats.stats.min / operations


def _with_statements(lock):
    def run():
        for _ in range(LOOP):
            with lock:
                pass
    return run


def _method_calls(lock):
    acquire, release = lock.acquire, lock.release

    def run():
        for _ in range(LOOP):
            acquire()
            release()
    return run


@pytest.mark.parametrize("style", [_with_statements, _method_calls], ids=["with", "methods"])
@pytest.mark.parametrize("contender", ["mshare", "multiprocessing.Lock", "posix_ipc.Semaphore"])
def test_uncontended_acquire_release(benchmark, region, semaphore, contender, style):
    lock = {"mshare": region.lock(), "multiprocessing.Lock": multiprocessing.Lock(),
            "posix_ipc.Semaphore": semaphore}[contender]
    benchmark.group = f"uncontended acquire+release ({style.__name__.strip('_')})"
    benchmark.pedantic(style(lock), rounds=20, warmup_rounds=2)
    _record(benchmark, benchmark.group, contender, LOOP)


def _contend(lock, counter, start, operations):
    start.wait()
    for _ in range(operations):
        with lock:
            counter.value += 1


@pytest.mark.parametrize("processes", [2, 4, 8])
@pytest.mark.parametrize("contender", ["mshare", "multiprocessing.Lock"])
def test_contended_throughput(benchmark, region, contender, processes):
    context = multiprocessing.get_context("fork")
    counter = context.RawValue("q", 0)  # unprotected: only the lock keeps it right
    lock = region.lock() if contender == "mshare" else context.Lock()
    per_process = CONTENDED_OPS // processes

    def setup():
        start = context.Event()
        workers = [context.Process(target=_contend, args=(lock, counter, start, per_process))
                   for _ in range(processes)]
        for worker in workers:
            worker.start()
        time.sleep(0.05)  # let every worker reach the start line
        return (start, workers), {}

    def race(start, workers):
        start.set()
        for worker in workers:
            worker.join()

    benchmark.group = f"contended, {processes} processes"
    benchmark.pedantic(race, setup=setup, rounds=3)
    assert counter.value == 3 * per_process * processes
    _record(benchmark, benchmark.group, contender, per_process * processes)


def test_alloc_free(benchmark, region):
    def run():
        for _ in range(LOOP):
            region.free(region.alloc(64))

    benchmark.group = "alloc(64)+free"
    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    _record(benchmark, benchmark.group, "mshare", LOOP)


def test_alloc_many_then_free(benchmark, region):
    sizes = [16 + (i * 7919) % 4000 for i in range(LOOP)]

    def run():
        addresses = [region.alloc(size) for size in sizes]
        for addr in addresses[::2] + addresses[1::2]:
            region.free(addr)

    benchmark.group = "10k mixed-size allocs, then frees in scattered order"
    benchmark.pedantic(run, rounds=10, warmup_rounds=1)
    _record(benchmark, benchmark.group, "mshare", 2 * LOOP)
