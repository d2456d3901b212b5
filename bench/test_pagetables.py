"""Figure 4: page-table memory per process per GiB, as processes and region size grow.

The measure is the system-wide `PageTables` line of /proc/meminfo, the only counter that
counts a shared page table once (read after the kernel folds its per-CPU counters). A
fleet of children starts and imports everything, the counter is read while they map
nothing (the baseline: the same live processes, not a separate batch, whose address-space
layout would differ), then they attach and touch every page and it is read again. Each
round does that with a new fleet; the median round is the figure, because other processes
on the machine move the counter too. Every child's own `VmPTE` is recorded beside it.
"""

from __future__ import annotations

import statistics

import pytest

from bench.conftest import SIZES, resident_region
from bench.fleet import Fleet
from bench.machine import GiB, human, pagetables_kib, settle_counters


def sample() -> int:
    settle_counters()
    return pagetables_kib()


def measure_fleet(benchmark, backend, size: int, count: int) -> None:
    """Time `count` children attaching and touching at once; record page-table growth."""
    with resident_region(backend, size) as name:
        rounds: list[dict] = []

        def finish_round():
            rounds[-1]["after_kib"] = sample()
            codes = rounds[-1].pop("fleet").stop()
            assert codes == [0] * count, f"benchmark children exited with {codes}"

        def new_fleet_and_sample():
            # A fresh fleet each round: Linux keeps a process's page tables after munmap,
            # so the same processes attaching again would allocate none.
            if rounds:
                finish_round()
            fleet = Fleet(backend.name, name, count)
            rounds.append({"fleet": fleet, "ready": fleet.ready, "before_kib": sample()})

        def attach_all():
            rounds[-1]["answers"] = rounds[-1]["fleet"].command("attach", "attached")

        try:
            benchmark.pedantic(attach_all, setup=new_fleet_and_sample,
                               rounds=SIZES.fleet_rounds)
            finish_round()
        finally:
            for leftover in rounds:
                if "fleet" in leftover:
                    leftover.pop("fleet").stop()

    growth = [r["after_kib"] - r["before_kib"] for r in rounds]
    median_growth = statistics.median(growth)
    last = rounds[-1]
    vmpte_growth = (sum(a["vmpte_kib"] for a in last["answers"])
                    - sum(a["vmpte_kib"] for a in last["ready"]))
    answers = last["answers"]
    benchmark.extra_info.update(
        backend=backend.name, family=backend.family, size=size, processes=count,
        page_size=answers[0]["page_size"],
        pagetables_growth_kib=growth,
        kib_per_process_per_gib=median_growth / count / (size / GiB),
        # The counter moves in 4 KiB pages: below this a figure is indistinguishable from 0.
        resolution_kib_per_process_per_gib=4 / count / (size / GiB),
        vmpte_kib_per_process_per_gib=vmpte_growth / count / (size / GiB),
        same_address=len({a["addr"] for a in answers}) == 1,
        median_inside_s=statistics.median(a["total_s"] for a in answers),
        max_inside_s=max(a["total_s"] for a in answers),
    )


@pytest.mark.benchmark(group="4a page tables by processes")
@pytest.mark.parametrize("count", SIZES.process_counts)
def test_pagetables_by_processes(benchmark, backend, count):
    measure_fleet(benchmark, backend, SIZES.pagetable_region, count)


@pytest.mark.benchmark(group="4b page tables by region size")
@pytest.mark.parametrize("size", SIZES.pagetable_sizes, ids=human)
def test_pagetables_by_size(benchmark, backend, size):
    measure_fleet(benchmark, backend, size, SIZES.pagetable_size_processes)
