"""Figures 1 and 2: the fixed costs of naming a region, in a process that has the library loaded."""

from __future__ import annotations

import pytest

from bench.conftest import SIZES, region_name, require, resident_region


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
    benchmark(round_trip)


@pytest.mark.benchmark(group="2 attach")
def test_attach(benchmark, backend):
    """Attach alone: the region exists, this process has the library imported and holds no
    other mapping of it (mshare would hand out that mapping again, at no cost)."""
    size = SIZES.small_region
    with resident_region(backend, size, touched=False, mapped=False) as name:
        backend.attach(name).close()  # the first attach loads lazily imported modules
        handles = []

        def close_previous():
            while handles:
                handles.pop().close()

        benchmark.extra_info.update(backend=backend.name, family=backend.family, size=size)
        benchmark.pedantic(lambda: handles.append(backend.attach(name)),
                           setup=close_previous, rounds=5 if SIZES.smoke else 300)
        close_previous()
