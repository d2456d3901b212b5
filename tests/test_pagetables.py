"""Page-table accounting, and the reason huge pages matter: independent processes (8, and
32 for the small hugetlb signal) attach a 2 GiB region and touch every page; the machine's
page tables grow by almost nothing per process with hugetlb (the PMD tables are shared)
and by 2 MiB per GiB with shm."""

import os
import statistics
import subprocess

import pytest

import mshare
from mshare.operations import bookkeeping_length
from mshare.pagetables import shared_span

from helpers import start_python

GiB = 1 << 30
KiB = 1 << 10
PROCESSES = 8
# One PMD table (4 KiB) maps 1 GiB of 2 MiB pages; one PUD table (4 KiB) maps 512 GiB.
TABLE = 4 * KiB

CHILD = """
import sys
import mshare
mshare.info({name!r})                     # warm every code path before the baseline
print("ready", flush=True)
sys.stdin.readline()
region = mshare.attach({name!r})
step = region.page_size
view = region.buf
view[::step] = bytes(view[::step])        # read and write one byte in every page
print("done", step, flush=True)
sys.stdin.readline()
"""


def pagetable_growth(name, rounds, processes):
    """System-wide ``PageTables`` growth, in bytes per process, while ``processes`` live
    interpreters attach ``name`` and touch every page, and the page sizes they touched.

    Measured in the same processes before and after (a separate baseline batch differs by
    address randomisation). Other processes starting or ending on the machine meanwhile
    move the figure by hundreds of KiB at random, so rounds are repeated until two agree
    within 1 KiB per process (the same figure twice is the quiet one); on a machine too
    busy for that, the median of all ``rounds``: it is wrong only if most rounds were
    disturbed, each by more than the margin the assertion leaves."""
    measured = []
    for _ in range(rounds):
        growth, steps = _one_round(name, processes)
        if any(abs(growth - earlier) <= KiB for earlier in measured):
            return growth, steps
        measured.append(growth)
    return statistics.median(measured), steps


def _one_round(name, processes=PROCESSES):
    children = [start_python(CHILD.format(name=name), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(processes)]
    try:
        for child in children:
            _expect(child, "ready")
        before = mshare.pagetable_stats(settle=True).system
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        steps = {int(_expect(child, "done")[1]) for child in children}
        after = mshare.pagetable_stats(settle=True).system
        for child in children:
            child.stdin.write("exit\n")
            child.stdin.flush()
            assert child.wait(timeout=60) == 0, child.stderr.read()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=60)
            child.stdout.close()
            child.stderr.close()
    return (after - before) / processes, steps


def _expect(child, answer):
    """The child's next line, which must start with ``answer``."""
    words = child.stdout.readline().split()
    assert words[:1] == [answer], f"child said {words}: {child.stderr.read()}"
    return words


def test_pagetable_stats_reports_system_and_process():
    stats = mshare.pagetable_stats()
    assert stats.system > 0 and stats.process > 0
    assert stats.system % 4096 == 0 and stats.process % 1024 == 0
    assert stats.system >= stats.process


def test_region_stats_of_shm(registry_path, name):
    with mshare.create(name, 8 << 20, hugepages="off") as region:
        untouched = region.stats()
        region.buf[::4096] = bytes(len(region.buf[::4096]))
        touched = region.stats()
        tail = bookkeeping_length(4096)
        assert (touched.backend, touched.page_size, touched.mapped) == ("shm", 4096, (8 << 20) + tail)
        # Only the bookkeeping after the region's bytes was written at create.
        assert untouched.resident <= tail and touched.resident == (8 << 20) + untouched.resident
        assert touched.huge_resident == 0 and not touched.pagetable_sharing
    mshare.unlink(name)
    with pytest.raises(ValueError, match="closed"):
        region.stats()


def test_shared_span_counts_whole_aligned_gibs():
    assert shared_span(16 * GiB, 2 * GiB) == 2 * GiB
    assert shared_span(16 * GiB, 2 * GiB + (2 << 20)) == 2 * GiB
    assert shared_span(16 * GiB, GiB - 1) == 0
    assert shared_span(16 * GiB + (2 << 20), GiB) == 0


def test_hugetlb_processes_share_page_tables(registry_path, name, hugetlbfs):
    try:
        with mshare.create(name, 2 * GiB, hugepages="hugetlb", populate=True) as region:
            assert region.stats().shared_span == 2 * GiB
            addr, map_length = region.addr, region.stats().mapped
            # More processes than the shm test: the signal per process is a few KiB, so
            # many of them lift it above what the rest of the machine does meanwhile.
            growth, steps = pagetable_growth(name, rounds=9, processes=4 * PROCESSES)
    finally:
        mshare.unlink(name)
    assert steps == {2 << 20}
    # Per process: one PUD table, plus a PMD table of its own for a partial last GiB
    # (the region's bookkeeping may spill past the last whole GiB). Unshared PMD tables
    # would add one table for each of the two whole GiBs on top of that.
    partial = -(-map_length // GiB) - shared_span(addr, map_length) // GiB
    shared_cost = TABLE + partial * TABLE
    unshared_cost = shared_cost + 2 * TABLE
    assert growth < (shared_cost + unshared_cost) / 2, (
        f"page tables grew {growth / KiB:.1f} KiB per process ({growth / 2 / KiB:.1f} KiB per "
        f"GiB); shared PMD tables cost {shared_cost / KiB:.0f} KiB, unshared {unshared_cost / KiB:.0f}"
    )


def test_shm_processes_each_pay_for_their_page_tables(registry_path, name):
    # The same measurement on 4 KiB pages: it can fail, and here it must. Its signal
    # (megabytes per process) dwarfs what other processes do meanwhile: one round will do.
    try:
        with mshare.create(name, 2 * GiB, hugepages="off", populate=True):
            growth, steps = _one_round(name)
    finally:
        mshare.unlink(name)
    assert steps == {4096}
    assert growth / 2 >= 1024 * KiB, f"only {growth / 2 / KiB:.0f} KiB per GiB per process"


# What a forked process pays in page tables of its own for a hugetlb region, whatever its
# size (docs/scale.md): its PUD table, one per 512 GiB span, and the PMD table of the
# partial GiB that holds the region's bookkeeping, which no other process shares. Every
# whole GiB is mapped by a PMD table that all processes share.
FLOOR = 2 * TABLE


def _vmpte_growth_in_a_forked_child(name):
    """``VmPTE`` growth of a child forked from here while it attaches ``name``, reads every
    page and takes the lock (which touches the bookkeeping)."""
    results, report = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            before = vmpte_bytes()
            region = mshare.attach(name)
            bytes(region.buf[::region.page_size])
            with region.lock():
                pass
            os.write(report, b"%d" % (vmpte_bytes() - before))
            code = 0
        finally:
            os._exit(code)
    os.close(report)
    with os.fdopen(results, "rb") as answer:
        growth = answer.read()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    return int(growth)


def vmpte_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmPTE:"):
                return int(line.split()[1]) * KiB
    raise AssertionError("no VmPTE line in /proc/self/status")


def test_a_forked_process_pays_the_same_few_page_tables_for_1_and_4_gib(registry_path, name,
                                                                         hugetlbfs):
    own = {}
    for size in (GiB, 4 * GiB):
        region = mshare.create(name, size, hugepages="hugetlb", populate=True)
        try:
            with region:
                shared = region.stats().shared_span
                growth = _vmpte_growth_in_a_forked_child(name)
        finally:
            mshare.unlink(name)
        # VmPTE charges a shared table to every process using it; what is left is the
        # child's own.
        assert shared == size
        own[size] = growth - shared // GiB * TABLE
    assert own[GiB] == own[4 * GiB], f"own page tables by size: {own}"
    assert 0 <= own[GiB] <= FLOOR, f"a forked process's own page tables: {own[GiB]} bytes"
