"""mshare gc: removes exactly what crashed processes left behind, reports it, and never
touches a complete or attached region, another user's files, or another registry."""

import fcntl
import os
import shutil

import pytest

import mshare
from forge import Forger
from helpers import run_python
from leftovers import crash, state
from mshare import addresses
from mshare.backends.shm import SHM_DIRECTORY
from mshare.registry import Registry, range_file_name
from people import OWNER, STRANGER, STRANGER_GROUP, as_member, as_owner

GiB = 1 << 30

CREATE = "import mshare; mshare.create({name!r}, 8192)"


def kinds(findings):
    return sorted(finding.kind for finding in findings)


def data_path(name):
    with Registry() as registry:
        return SHM_DIRECTORY + registry.read_entry(name)[0].location


@pytest.fixture
def complete(registry_path):
    """A complete region nobody maps, holding known bytes; unlinked afterwards."""
    with mshare.create("survivor", 4096, mode=0o644) as region:
        region.buf[:8] = b"survivor"
    yield "survivor"
    mshare.unlink("survivor")


def assert_intact(name):
    with mshare.attach(name, readonly=True) as region:
        assert bytes(region.buf[:8]) == b"survivor"


def test_gc_of_a_healthy_registry_removes_nothing(registry_path, complete):
    attached = mshare.create("attached", 4096)
    unlinked = mshare.create("unlinked-but-mapped", 4096)
    mshare.unlink("unlinked-but-mapped")
    before = state(registry_path)
    report = mshare.gc()
    assert report.removed == []
    assert [(finding.kind, finding.reason) for finding in report.kept] == [
        ("range", "data object gone, still mapped by 1 process(es)")]
    assert state(registry_path) == before
    assert_intact(complete)
    attached.close()
    unlinked.close()
    mshare.unlink("attached")


@pytest.mark.parametrize("step, removed", [
    ("create:range-opened", ["range"]),
    ("create:data-created", ["data object", "range"]),
    ("create:entry-written", ["data object", "range", "temporary file"]),
    ("unlink:entry-removed", ["data object", "range"]),
])
def test_gc_removes_what_a_crash_left(registry_path, complete, name, step, removed):
    target = name + "-target"
    # Killed in create: as if it never started. Killed in unlink after the entry went:
    # as if it finished. Either way, the registry as it was with just the survivor.
    expected = state(registry_path)
    if step.startswith("unlink"):
        mshare.create(target, 8192).close()
        crash(f"import mshare; mshare.unlink({target!r})", step)
    else:
        crash(CREATE.format(name=target), step)
    dry = mshare.gc(dry_run=True)
    assert kinds(dry.removed) == removed and dry.kept == []
    report = mshare.gc()
    assert report.removed == dry.removed and report.kept == []
    assert state(registry_path) == expected
    assert mshare.gc().removed == []
    assert_intact(complete)


def test_stale_entry_goes_unless_someone_still_maps_it(registry_path, complete, name):
    region = mshare.create(name, 4096)
    os.unlink(data_path(name))  # an operator removed the data object by hand
    report = mshare.gc()
    assert report.removed == [] and kinds(report.kept) == ["entry", "range"]
    assert "still map" in report.kept[0].reason
    region.close()  # the last one out releases the range itself
    report = mshare.gc()
    assert kinds(report.removed) == ["entry"] and report.kept == []
    assert "vanished" in report.removed[0].reason
    assert [info.name for info in mshare.list()] == [complete]
    assert_intact(complete)


def test_temporary_files_of_live_processes_stay(registry_path, complete):
    dead_pid = run_python("import os; print(os.getpid())").stdout.strip()
    for pid in (dead_pid, os.getpid()):
        with open(os.path.join(registry_path, f".tmp-lock-{pid}-0badcafe"), "x"):
            pass
    report = mshare.gc()
    assert [finding.path for finding in report.removed] == [
        os.path.join(registry_path, f".tmp-lock-{dead_pid}-0badcafe")]
    os.unlink(os.path.join(registry_path, f".tmp-lock-{os.getpid()}-0badcafe"))


def test_gc_leaves_other_registries_alone(registry_path, complete, name, monkeypatch):
    other = registry_path + "-other"
    monkeypatch.setenv("MSHARE_ROOT", other)
    crash(CREATE.format(name=name), "create:data-created")
    orphaned = state(other)
    monkeypatch.setenv("MSHARE_ROOT", registry_path)
    assert mshare.gc().removed == []
    assert state(other) == orphaned
    monkeypatch.setenv("MSHARE_ROOT", other)
    assert kinds(mshare.gc().removed) == ["data object", "range"]
    assert state(other) == ([], [])
    shutil.rmtree(other)
    monkeypatch.setenv("MSHARE_ROOT", registry_path)


def test_each_user_sweeps_only_their_own_leftovers(registry_path, complete, name, user_site):
    crash(CREATE.format(name=name + "-owner"), "create:data-created", **as_owner())
    crash(CREATE.format(name=name + "-root"), "create:data-created")
    gc = "import mshare; r = mshare.gc(); print(len(r.removed), len(r.kept))"
    assert run_python(gc, **as_member()).stdout.split() == ["0", "2"]
    assert run_python(gc, **as_owner()).stdout.split() == ["2", "1"]
    report = mshare.gc()
    assert kinds(report.removed) == ["data object", "range"]
    assert all(str(OWNER) not in finding.reason for finding in report.removed)
    assert_intact(complete)


def test_an_unreadable_entry_makes_gc_keep_its_owners_orphans(registry_path, complete, name, user_site):
    run_python(f"import mshare; mshare.create({name!r}, 4096, mode=0o000).close()", **as_owner())
    crash(CREATE.format(name=name + "-crashed"), "create:data-created", **as_owner())
    output = run_python("import mshare; r = mshare.gc(); print(*[f.reason for f in r.kept], sep='|')",
                        **as_owner()).stdout
    assert "cannot read" in output
    report = mshare.gc()  # root reads every entry and can tell
    assert kinds(report.removed) == ["data object", "range"]
    run_python(f"import mshare; mshare.unlink({name!r})", **as_owner())


def test_planted_files_are_reported_not_removed(registry_path, complete):
    fifo = os.path.join(registry_path, ".range-0000300000000000-0000300040000000")
    os.mkfifo(fifo)
    os.symlink("/etc/passwd", os.path.join(registry_path, "link"))
    try:
        report = mshare.gc()
        assert report.removed == []
        assert sorted((finding.kind, os.path.basename(finding.path)) for finding in report.kept) == [
            ("entry", "link"), ("range", os.path.basename(fifo))]
        assert os.path.exists(fifo) and os.path.islink(os.path.join(registry_path, "link"))
    finally:
        os.unlink(fifo)
        os.unlink(os.path.join(registry_path, "link"))


def test_gc_command_reports_and_dry_runs(registry_path, complete, name):
    crash(CREATE.format(name=name), "create:data-created")
    dry = run_python("import sys; from mshare.cli import main; sys.exit(main(['gc', '--dry-run']))")
    assert "would remove data object /dev/shm/mshare-" in dry.stdout
    assert dry.stdout.splitlines()[-1] == "2 would remove, 0 kept"
    real = run_python("import sys; from mshare.cli import main; sys.exit(main(['gc']))")
    assert real.stdout.splitlines()[-1] == "2 removed, 0 kept"
    assert "no entry refers to it" in real.stdout
    with pytest.raises(TypeError):
        mshare.gc(dry_run="yes")


def test_root_sweeps_ranges_planted_to_block_addresses(registry_path, complete):
    # Another user claims address ranges by planting range files: one naming the
    # survivor's data object, one with garbage. Root's gc frees both once unheld.
    with Registry(registry_path) as registry:
        victim = registry.read_entry(complete)[0]
    forger = Forger(registry_path, STRANGER, STRANGER_GROUP)
    start = addresses.arena()[0] + 600 * GiB
    named = forger.plant_range(start, start + GiB, victim.location)
    garbage = forger.file(os.path.join(registry_path, range_file_name(start + GiB, start + 2 * GiB)),
                          b"\xff\xfe junk")
    holder = os.open(named, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_SH)
    try:
        report = mshare.gc()
        assert [(finding.path, finding.reason) for finding in report.removed] == [
            (garbage, "empty or unreadable, and nobody maps it")]
        assert [(finding.path, finding.reason) for finding in report.kept] == [
            (named, "it records another user's data object, still mapped by 1 process(es)")]
    finally:
        os.close(holder)
    assert [(finding.path, finding.reason) for finding in mshare.gc().removed] == [
        (named, "it records another user's data object, and nobody maps it")]
    assert_intact(complete)
    forger.made.clear()
