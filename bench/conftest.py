"""Fixtures shared by every benchmark: a private registry, the sizes, backends, resident
regions, and the table of ratios that the lock and allocator benchmarks print at the end.

Set MSHARE_BENCH_SMOKE=1 (or run `python -m bench --smoke`) for tiny sizes and few
processes: the whole suite then runs in seconds, so CI keeps it from rotting.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import tempfile

import pytest

# Before mshare is imported anywhere: this run's regions live in a registry of its own,
# and every child inherits it through the environment. On the file system of the default
# registry (/dev/shm/mshare), so the figures are those users get.
_registry = tempfile.TemporaryDirectory(prefix="mshare-bench-", dir="/dev/shm")
os.environ["MSHARE_ROOT"] = _registry.name

from bench.backends import Backend, all_backends, by_name, touch  # noqa: E402
from bench.machine import describe, human, plan_sizes  # noqa: E402

SMOKE = os.environ.get("MSHARE_BENCH_SMOKE") == "1"
SIZES = plan_sizes(SMOKE)
_names = itertools.count()
_unavailable: dict[tuple[str, int], str | None] = {}
RESULTS: dict[tuple[str, str], float] = {}  # (group, contender) -> seconds per operation


def pytest_report_header(config):
    machine = describe()
    lines = [f"mshare bench ({'smoke' if SMOKE else 'full'}): {machine['cpu']}, "
             f"{machine['cores']} cores, {machine['memory_total_gib']} GiB, "
             f"kernel {machine['kernel']}, hugetlb pool {machine['hugetlb_pool']}"]
    for key, value in SIZES.as_dict().items():
        if isinstance(value, list):
            value = ", ".join(human(v) if v >= 1024 else str(v) for v in value)
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 1024:
            value = human(value)
        lines.append(f"  {key}: {value}")
    return lines


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["mshare_bench"] = {"machine": describe(), "sizes": SIZES.as_dict(),
                                    "smoke": SMOKE}


def pytest_sessionfinish(session, exitstatus):
    # A region left in the private registry is a leak of the suite itself: fail the run.
    try:
        import mshare
    except ImportError:
        mshare = None
    leftovers = [region.name for region in mshare.list()] if mshare else []
    for name in leftovers:
        mshare.unlink(name)
    _registry.cleanup()
    if leftovers:
        print(f"\nbench: regions left behind and now removed: {leftovers}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def region_name() -> str:
    return f"bench-{os.getpid()}-{next(_names)}"


def require(backend: Backend, size: int) -> None:
    """Skip, saying why, when this backend cannot hold `size` here (no pool, no mount...)."""
    key = (backend.name, size)
    if key not in _unavailable:
        _unavailable[key] = backend.unavailable(size)
    if _unavailable[key]:
        pytest.skip(_unavailable[key])


@contextlib.contextmanager
def resident_region(backend: Backend, size: int, touched: bool = True, mapped: bool = True):
    """A region that exists and, when `touched`, has every page in memory; always unlinked.

    With `mapped=False` this process unmaps its creator's handle before yielding, so that
    an attach here maps afresh instead of sharing the creator's mapping.
    """
    require(backend, size)
    name = region_name()
    try:
        handle = backend.create(name, size)
    except OSError as error:
        # Someone else on the machine took the room (pool pages, mount space) since the
        # backend was probed: that is a backend unavailable now, not a failure of the suite.
        if error.errno in (errno.ENOSPC, errno.ENOMEM):
            pytest.skip(f"{backend.name} cannot hold {human(size)} right now: {error}")
        raise
    try:
        if touched:
            touch(handle)
        if not mapped:
            handle.close()
            handle = None
        yield name
    finally:
        if handle is not None:
            handle.close()
        backend.unlink(name)


@pytest.fixture(params=[backend.name for backend in all_backends()])
def backend(request) -> Backend:
    return by_name(request.param)


@pytest.fixture
def registry_path(monkeypatch):
    """A registry of this test's own (the lock and allocator benchmarks)."""
    parent = tempfile.mkdtemp(prefix="mshare-bench-")
    path = os.path.join(parent, "registry")  # not made yet: mshare makes it
    monkeypatch.setenv("MSHARE_ROOT", path)
    yield path
    shutil.rmtree(parent, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("mshare against its peers (time per operation, lower is better)")
    for group in dict.fromkeys(group for group, _ in RESULTS):
        rows = {who: seconds for (g, who), seconds in RESULTS.items() if g == group}
        ours = rows.get("mshare")
        write(f"{group}:")
        for who, seconds in rows.items():
            ratio = f"  speed-up of mshare: {seconds / ours:5.2f}x" if ours and who != "mshare" else ""
            write(f"    {who:26} {seconds * 1e9:10.1f} ns/op  {1 / seconds:14,.0f} ops/s{ratio}")
