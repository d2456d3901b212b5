"""The region lock against multiprocessing.Lock and posix_ipc.Semaphore; the allocator.

mshare is measured as users write it, ``with region.lock():``; the peers as ``with lock:``.

Run: ``python -m bench -- -k "lock or alloc"`` (or ``PYTHONPATH=. python -m pytest
bench/test_bench_lock.py``). Each benchmarked call does LOOP operations so that the
harness's own overhead does not dominate.
"""

import multiprocessing
import time
import uuid

import posix_ipc
import pytest

import mshare

from bench.conftest import RESULTS

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
    benchmark.extra_info.update(lock_contender=contender)  # the report's lock table


def _with_statements(lock):
    def run():
        for _ in range(LOOP):
            with lock:
                pass
    return run


def _with_region_lock(region):
    # Exactly as the README writes it: a fresh `region.lock()` in every `with`.
    def run():
        for _ in range(LOOP):
            with region.lock():
                pass
    return run


def _method_calls(lock):
    acquire, release = lock.acquire, lock.release

    def run():
        for _ in range(LOOP):
            acquire()
            release()
    return run


@pytest.mark.parametrize("style", ["with", "methods"])
@pytest.mark.parametrize("contender", ["mshare", "multiprocessing.Lock", "posix_ipc.Semaphore"])
def test_uncontended_acquire_release(benchmark, region, semaphore, contender, style):
    lock = {"mshare": region.lock(), "multiprocessing.Lock": multiprocessing.Lock(),
            "posix_ipc.Semaphore": semaphore}[contender]
    if style == "methods":
        run = _method_calls(lock)
    else:
        run = _with_region_lock(region) if contender == "mshare" else _with_statements(lock)
    benchmark.group = f"uncontended acquire+release ({style})"
    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    _record(benchmark, benchmark.group, contender, LOOP)


def _contend_on_region(region, counter, start, operations):
    start.wait()
    for _ in range(operations):
        with region.lock():
            counter.value += 1


def _contend(lock, counter, start, operations):
    start.wait()
    for _ in range(operations):
        with lock:
            counter.value += 1


@pytest.mark.parametrize("processes", [2, 4, 8])
@pytest.mark.parametrize("contender", ["mshare", "multiprocessing.Lock", "posix_ipc.Semaphore"])
def test_contended_throughput(benchmark, region, semaphore, contender, processes):
    context = multiprocessing.get_context("fork")
    counter = context.RawValue("q", 0)  # unprotected: only the lock keeps it right
    target, lock = {"mshare": (_contend_on_region, region),
                    "multiprocessing.Lock": (_contend, context.Lock()),
                    "posix_ipc.Semaphore": (_contend, semaphore)}[contender]
    per_process = CONTENDED_OPS // processes

    def setup():
        start = context.Event()
        workers = [context.Process(target=target, args=(lock, counter, start, per_process))
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
