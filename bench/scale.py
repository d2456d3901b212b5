"""The kernel proposal's own scenario: how many processes and how big, and what it costs.

``MSHARE_BENCH_SCALE`` sets the most processes (default 1,000; smoke runs use 4), so a
full run and a quick check share one code path. The peer on 4 KiB pages stops at
``PEER_MOST`` processes, where its page tables already take hundreds of MiB; past that
its figures are extrapolated, and everything that shows them says so.
"""

from __future__ import annotations

import os

from bench.machine import GiB, KiB, MiB, hugetlb_pool

SCALE_VARIABLE = "MSHARE_BENCH_SCALE"
DEFAULT_MOST = 1000
SMOKE_MOST = 4
PEER_MOST = 100
HUGETLB_SIZE, PEER_SIZE = 4 * GiB, 1 * GiB
SMOKE_SIZE = 16 * MiB
# Pages of the shared pool left to everyone else while the region exists.
POOL_MARGIN_PAGES = 256

# The cover letters' case: a 300 GB shared area and 1,500 client processes.
SEED_BYTES = 300 * 10**9
SEED_PROCESSES = 1500
# One PMD table (4 KiB) maps 1 GiB of 2 MiB pages; hugetlb processes share it.
PMD_TABLE_KIB = 4


def most_processes(smoke: bool) -> int:
    text = os.environ.get(SCALE_VARIABLE)
    if text is None:
        return SMOKE_MOST if smoke else DEFAULT_MOST
    most = int(text)
    if most < 1:
        raise ValueError(f"{SCALE_VARIABLE} must be a number of processes >= 1, not {text!r}")
    return most


def process_counts(most: int) -> list[int]:
    """1, 10, 100, 1,000 up to ``most``, and ``most`` itself."""
    return sorted({n for n in (1, 10, 100, 1000) if n <= most} | {most})


def hugetlb_size(smoke: bool) -> int:
    """4 GiB when the pool has room beside other users, else the whole GiBs it has."""
    if smoke:
        return SMOKE_SIZE
    pool = hugetlb_pool()
    spare = (pool["free_pages"] - POOL_MARGIN_PAGES) * pool["page_size"]
    return min(HUGETLB_SIZE, max(spare // GiB, 1) * GiB)


def peer_size(smoke: bool) -> int:
    return SMOKE_SIZE if smoke else PEER_SIZE


def seed_scenario_kib(extra: dict) -> tuple[float, str]:
    """Page tables the seed scenario would take, in KiB, and the formula with its numbers.

    On 4 KiB pages every process pays for every GiB it maps, so the figure scales with
    both. On shared hugetlb tables a process pays a fixed amount whatever the size (its
    own PUD table and any table not shared) and each GiB costs one PMD table, once."""
    seed_gib = SEED_BYTES / GiB
    if extra["page_size"] == 4 * KiB:
        per_gib = extra["kib_per_process_per_gib"]
        total = SEED_PROCESSES * seed_gib * per_gib
        return total, (f"{SEED_PROCESSES:,} processes x {seed_gib:.1f} GiB x "
                       f"{per_gib:,.1f} KiB per process per GiB")
    per_process = extra["kib_per_process"]
    total = SEED_PROCESSES * per_process + seed_gib * PMD_TABLE_KIB
    return total, (f"{SEED_PROCESSES:,} processes x {per_process:,.1f} KiB per process + "
                   f"{seed_gib:.1f} GiB x {PMD_TABLE_KIB} KiB of shared PMD tables")
