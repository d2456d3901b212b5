"""Figure 5: parallel scan throughput. N workers each sum the whole region as float64.

The workers attach first (not timed); then all are told to scan at once and the wall time
until the last one answers gives the aggregate GB/s. The "first" pass runs on a fresh
mapping, so it includes the page faults; the "repeat" pass runs on mapped pages and shows
what is left: TLB reach, which huge pages widen.
"""

from __future__ import annotations

import time

import pytest

from bench.conftest import SIZES, resident_region
from bench.fleet import Fleet


@pytest.mark.benchmark(group="5 parallel scan")
@pytest.mark.parametrize("scan_pass", ["first", "repeat"])
@pytest.mark.parametrize("workers", SIZES.scan_workers)
def test_parallel_scan(benchmark, backend, workers, scan_pass):
    size = SIZES.scan_region
    with resident_region(backend, size) as name, Fleet(backend.name, name, workers) as fleet:
        walls: list[float] = []
        attached = False

        def prepare():
            nonlocal attached
            if scan_pass == "first" and attached:
                fleet.command("close", "closed")
                attached = False
            if not attached:
                fleet.command("map", "attached")
                attached = True
            if scan_pass == "repeat":
                fleet.command("scan", "scanned")

        def scan():
            started = time.perf_counter()
            fleet.command("scan", "scanned")
            walls.append(time.perf_counter() - started)

        benchmark.pedantic(scan, setup=prepare, rounds=SIZES.fleet_rounds)

    best = min(walls)
    benchmark.extra_info.update(
        backend=backend.name, family=backend.family, size=size, workers=workers,
        scan_pass=scan_pass, gb_per_s=workers * size / best / 1e9, wall_s=walls)
