"""Figures 1 and 2: the fixed costs of naming a region, in a process that has the library loaded."""

from __future__ import annotations

import os
import resource
import sys
from multiprocessing import shared_memory

import pytest

from bench.attach_floor import AttachFloor
from bench.backends import by_name
from bench.conftest import SIZES, region_name, require, resident_region


def benchmark_with_cpu_split(benchmark, operation) -> None:
    """Benchmark ``operation`` and record the CPU time each call spent in the kernel and in
    user space (the interpreter, the libraries), over every call the benchmark made."""
    calls = 0

    def counted():
        nonlocal calls
        calls += 1
        operation()

    before = resource.getrusage(resource.RUSAGE_THREAD)
    benchmark(counted)
    after = resource.getrusage(resource.RUSAGE_THREAD)
    benchmark.extra_info.update(kernel_us=(after.ru_stime - before.ru_stime) / calls * 1e6,
                                user_us=(after.ru_utime - before.ru_utime) / calls * 1e6)


@pytest.mark.benchmark(group="1 round trip")
def test_round_trip(benchmark, backend):
    """create + attach + close + unlink of a small region, all in this process."""
    size = SIZES.small_region
    require(backend, size)

    def round_trip():
        name = region_name()
        created = backend.create(name, size)
        attached = backend.attach(name)
        attached.close()
        created.close()
        backend.unlink(name)

    benchmark.extra_info.update(backend=backend.name, family=backend.family, size=size)
    benchmark_with_cpu_split(benchmark, round_trip)


@pytest.mark.benchmark(group="1 round trip")
def test_round_trip_shared_memory_with_fallocate(benchmark):
    """The peer that reserves its memory up front as mshare does (`posix_fallocate`, so a
    full /dev/shm fails at create and never as a SIGBUS on first touch): the stdlib's
    round trip plus that reservation, the fair comparison for mshare's own."""
    size = SIZES.small_region
    # The attaching handle stays out of the resource tracker, as the shared_memory peer's.
    attach_options = {"track": False} if sys.version_info >= (3, 13) else {}

    def round_trip():
        created = shared_memory.SharedMemory(region_name(), create=True, size=size)
        os.posix_fallocate(created._fd, 0, size)
        attached = shared_memory.SharedMemory(created.name, **attach_options)
        attached.close()
        created.close()
        created.unlink()

    benchmark.extra_info.update(backend="shared_memory+fallocate", family="peer", size=size)
    benchmark_with_cpu_split(benchmark, round_trip)


def time_attaches(benchmark, attach) -> None:
    """Time ``attach()`` alone: each round's handle is closed before the next, untimed."""
    attach().close()  # the first attach loads lazily imported modules
    handles = []

    def close_previous():
        while handles:
            handles.pop().close()

    benchmark.pedantic(lambda: handles.append(attach()), setup=close_previous,
                       rounds=5 if SIZES.smoke else 300)
    close_previous()


@pytest.mark.benchmark(group="2 attach")
def test_attach(benchmark, backend):
    """Attach alone: the region exists, this process has the library imported and holds no
    other mapping of it (mshare would hand out that mapping again, at no cost)."""
    size = SIZES.small_region
    with resident_region(backend, size, touched=False, mapped=False) as name:
        benchmark.extra_info.update(backend=backend.name, family=backend.family, size=size)
        time_attaches(benchmark, lambda: backend.attach(name))


@pytest.mark.benchmark(group="2 attach")
def test_attach_floor(benchmark):
    """The floor under mshare's attach of a /dev/shm region: its system calls alone, from
    compiled code (bench/attach_floor.py), timed as every attach above is."""
    shm, size = by_name("mshare-shm"), SIZES.small_region
    with resident_region(shm, size, touched=False, mapped=False) as name:
        floor = AttachFloor(name)
        benchmark.extra_info.update(backend=floor.name, family=floor.family, size=size)
        time_attaches(benchmark, floor.attach)
