"""Costs against the number of live regions: create, attach and unlink with 10 and with
1,000 other regions in the registry (flat is the aim), and `list()` of 1,000 and 10,000
regions (linear, with the constant per region reported in `extra_info`)."""

from __future__ import annotations

import contextlib

import pytest

from bench.conftest import SMOKE, region_name

LIVE = (10, 50) if SMOKE else (10, 1_000)
LISTED = (20, 100) if SMOKE else (1_000, 10_000)
ROUNDS = 5 if SMOKE else 200
# An attach + close is some 100 µs, where a few slow system calls move a median of 200.
ATTACH_ROUNDS = 5 if SMOKE else 1_000
SIZE = 4096  # the registry's work, not the memory's: the smallest region


@contextlib.contextmanager
def live_regions(count: int):
    """`count` regions in the registry, none mapped here; all unlinked afterwards."""
    import mshare

    names = [region_name() for _ in range(count)]
    try:
        for name in names:
            mshare.create(name, SIZE, hugepages="off").close()
        yield names
    finally:
        for name in names:
            mshare.unlink(name)


@pytest.mark.parametrize("live", LIVE)
@pytest.mark.benchmark(group="8 live regions: create + close + unlink")
def test_create_close_unlink_with_live_regions(benchmark, live):
    import mshare

    with live_regions(live):
        def round_trip():
            name = region_name()
            mshare.create(name, SIZE, hugepages="off").close()
            mshare.unlink(name)

        round_trip()
        benchmark.extra_info.update(backend="mshare-shm", family="mshare", live=live)
        benchmark.pedantic(round_trip, rounds=ROUNDS)


@pytest.mark.parametrize("live", LIVE)
@pytest.mark.benchmark(group="8 live regions: attach + close")
def test_attach_with_live_regions(benchmark, live):
    import mshare

    with live_regions(live) as names:
        name = names[len(names) // 2]
        mshare.attach(name).close()
        benchmark.extra_info.update(backend="mshare-shm", family="mshare", live=live)
        benchmark.pedantic(lambda: mshare.attach(name).close(), rounds=ATTACH_ROUNDS)


@pytest.mark.parametrize("live", LIVE)
@pytest.mark.benchmark(group="8 live regions: unlink")
def test_unlink_with_live_regions(benchmark, live):
    import mshare

    with live_regions(live):
        def make():
            name = region_name()
            mshare.create(name, SIZE, hugepages="off").close()
            return (name,), {}

        benchmark.extra_info.update(backend="mshare-shm", family="mshare", live=live)
        benchmark.pedantic(mshare.unlink, setup=make, rounds=ROUNDS)


@pytest.mark.parametrize("listed", LISTED)
@pytest.mark.benchmark(group="9 list")
def test_list(benchmark, listed):
    import mshare

    with live_regions(listed):
        assert len(mshare.list()) == listed
        benchmark.extra_info.update(backend="mshare-shm", family="mshare", regions=listed)
        benchmark.pedantic(mshare.list, rounds=3 if SMOKE else 5)
        benchmark.extra_info["µs per region"] = round(
            benchmark.stats.stats.median / listed * 1e6, 2)
