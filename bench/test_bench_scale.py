"""Figure 10: the kernel proposal's scenario, 1 to 1,000 processes mapping one large region.

Processes are forked after the libraries are imported (``bench/forked_fleet.py``), so a
small machine holds a thousand of them. Each attaches the region and reads every page,
one process at a time, and keeps its mapping; the system-wide ``PageTables`` counter is
read before and after (the only counter that counts a shared table once), and every
child reports its own ``VmPTE`` growth and its attach-and-read time.

mshare's hugetlb region runs up to ``MSHARE_BENCH_SCALE`` processes (default 1,000);
``multiprocessing.shared_memory`` up to ``PEER_MOST``, past which its page tables are
extrapolated (linear in processes: each maps and pays alone), marked so in the records,
the plot and the headline. The headline is the seed scenario (300 GB x 1,500 processes)
priced from the measured figures, with the formula.
"""

from __future__ import annotations

import statistics

import pytest

from bench.backends import by_name
from bench.conftest import SMOKE, resident_region
from bench.forked_fleet import ForkedFleet
from bench.machine import GiB, pagetables_kib, settle_counters
from bench.scale import (
    PEER_MOST, hugetlb_size, most_processes, peer_size, process_counts, seed_scenario_kib,
)

MOST = most_processes(SMOKE)
CASES = ([("mshare-hugetlb", count) for count in process_counts(MOST)]
         + [("shared_memory", count) for count in process_counts(min(MOST, PEER_MOST))])


def _sample() -> int:
    settle_counters()
    return pagetables_kib()


@pytest.mark.benchmark(group="10 scale: processes mapping one region")
@pytest.mark.parametrize(("backend_name", "count"), CASES,
                         ids=[f"{name}-{count}" for name, count in CASES])
def test_processes_mapping_one_region(benchmark, backend_name, count):
    backend = by_name(backend_name)
    size = hugetlb_size(SMOKE) if backend_name == "mshare-hugetlb" else peer_size(SMOKE)
    with resident_region(backend, size) as name:
        measured = {}

        def fork_fleet():
            measured["fleet"] = ForkedFleet(backend, name, count)
            measured["before_kib"] = _sample()
            return (), {}

        def release_all():
            measured["replies"] = measured["fleet"].release_all()

        try:
            benchmark.pedantic(release_all, setup=fork_fleet, rounds=1)
            measured["after_kib"] = _sample()
        finally:
            if "fleet" in measured:
                codes = measured["fleet"].stop()
        assert codes == [0] * count, f"forked children exited with {set(codes)}"

    replies = measured["replies"]
    (page_size,) = {reply["page_size"] for reply in replies}
    assert all(reply["pages"] == size // page_size for reply in replies), (
        "a child did not read every page")
    if backend.family == "mshare":
        assert len({reply["addr"] for reply in replies}) == 1, "mapped at different addresses"
    growth_kib = measured["after_kib"] - measured["before_kib"]
    extra = {
        "backend": backend_name, "family": backend.family, "processes": count, "size": size,
        "page_size": page_size, "extrapolated": False,
        "pagetables_growth_kib": growth_kib,
        "kib_per_process": growth_kib / count,
        "kib_per_process_per_gib": growth_kib / count / (size / GiB),
        "vmpte_kib_per_process": statistics.mean(r["vmpte_growth_kib"] for r in replies),
        "median_attach_read_s": statistics.median(r["seconds"] for r in replies),
        "max_attach_read_s": max(r["seconds"] for r in replies),
    }
    extra["seed_scenario_kib"], extra["seed_scenario_formula"] = seed_scenario_kib(extra)
    benchmark.extra_info.update(extra)
