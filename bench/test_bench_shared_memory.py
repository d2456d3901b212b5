"""Figure 7: the drop-in `mshare.shared_memory` against `multiprocessing.shared_memory`,
side by side in one run: round trip, attach, attach-and-touch and page tables, each
measured exactly as figures 1 to 4 measure the libraries' own APIs."""

from __future__ import annotations

import pytest

from bench import test_attach_touch, test_latency, test_pagetables
from bench.backends import DROP_IN, Backend, by_name
from bench.conftest import SIZES
from bench.machine import human


@pytest.fixture(params=[DROP_IN, "shared_memory"])
def contender(request) -> Backend:
    return by_name(request.param)


@pytest.mark.benchmark(group="7a drop-in round trip")
def test_drop_in_round_trip(benchmark, contender):
    test_latency.test_round_trip(benchmark, contender)


@pytest.mark.benchmark(group="7b drop-in attach")
def test_drop_in_attach(benchmark, contender):
    test_latency.test_attach(benchmark, contender)


@pytest.mark.benchmark(group="7c drop-in attach and touch")
@pytest.mark.parametrize("size", SIZES.attach_touch_sizes, ids=human)
def test_drop_in_attach_and_touch(benchmark, contender, size):
    test_attach_touch.test_attach_and_touch(benchmark, contender, size)


@pytest.mark.benchmark(group="7d drop-in page tables")
def test_drop_in_pagetables(benchmark, contender):
    test_pagetables.measure_fleet(benchmark, contender, SIZES.pagetable_region,
                                  SIZES.pagetable_size_processes)
