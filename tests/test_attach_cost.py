"""What one attach costs the system, counted: the files it opens, the locks it takes and
the system calls it makes.

Files and locks are counted with an audit hook (``open`` and ``fcntl.flock`` events; the
compiled core raises both for what it opens and locks, as ``os.open`` and ``fcntl.flock``
do), system calls with ``strace``, each in a fresh interpreter, so no other test pays
for them. Counts, unlike times, are exact: one more step on the attach path (a stat, a
second read, a lock) turns these tests red.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid

import pytest

import mshare
from helpers import run_python

COUNT_ONE_ATTACH = """
    import json, os, sys
    import mshare
    mshare.attach({name!r}).close()  # the first attach imports what it imports lazily
    held = mshare.attach({name!r}) if {already_mapped} else None
    events = []

    def hook(event, arguments):
        if event == "open":
            events.append(["open", os.fsdecode(arguments[0])])
        elif event == "fcntl.flock":
            events.append(["flock", arguments[1]])

    sys.addaudithook(hook)
    region = mshare.attach({name!r}, readonly={readonly})
    of_the_attach = list(events)
    region.close()
    print(json.dumps(of_the_attach))
"""

# Between two markers (stats of paths that do not exist), one attach; the child prints
# the region's address so the trace can tell the region's mapping from the allocator's.
TRACE_ONE_ATTACH = """
    import os
    import mshare
    mshare.attach({name!r}).close()  # the first attach imports what it imports lazily
    held = mshare.attach({name!r}) if {already_mapped} else None
    os.path.exists({begin!r})
    region = mshare.attach({name!r})
    os.path.exists({end!r})
    print(region.addr)
    region.close()
"""


def created(name, hugepages="off"):
    with mshare.create(name, 1 << 20, hugepages=hugepages):
        pass


def events_of_one_attach(name, readonly=False, already_mapped=False):
    """``["open", path]`` and ``["flock", operation]`` of one attach of ``name``."""
    created(name)
    try:
        code = COUNT_ONE_ATTACH.format(name=name, readonly=readonly, already_mapped=already_mapped)
        return json.loads(run_python(code).stdout)
    finally:
        mshare.unlink(name)


# The C library chooses among these for stat, lstat and fstat.
STAT_CALLS = {"stat", "lstat", "fstat", "newfstatat", "fstatat64", "statx"}


# The same, through the benchmark suite's floor under an attach (bench/attach_floor.py),
# built before the first marker; the repository is looked in last, so that the installed
# mshare is the one imported.
TRACE_ONE_FLOOR_ATTACH = """
    import os, sys
    sys.path.append({repository!r})
    import mshare
    from bench.attach_floor import AttachFloor
    floor = AttachFloor({name!r})
    floor.attach().close()
    os.path.exists({begin!r})
    handle = floor.attach()
    os.path.exists({end!r})
    print(mshare.info({name!r}).addr)
    handle.close()
"""
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What an attach of a region on /dev/shm not mapped here makes, in order.
SHM_ATTACH_SYSTEM_CALLS = [
    "openat", "stat",                      # the registry directory, checked
    "openat", "stat", "read", "close",     # the entry, read in one read
    "openat", "stat",                      # the data object
    "openat", "stat", "flock",             # the attach mark
    "stat",                                # the data still in place
    "mmap", "close", "close",              # mapped; data and directory closed
]


def system_calls_of_one_attach(name, tmp_path, already_mapped=False, template=TRACE_ONE_ATTACH):
    """The names of the system calls one attach of ``name`` makes, in order (every kind
    of stat as ``stat``), leaving out the memory the interpreter's allocator maps and
    unmaps for itself."""
    begin, end = (f"/mshare-attach-cost-{uuid.uuid4().hex}" for _ in range(2))
    trace = tmp_path / "trace"
    code = template.format(name=name, already_mapped=already_mapped, begin=begin, end=end,
                           repository=REPOSITORY)
    created(name)
    try:
        result = subprocess.run(
            ["strace", "-qq", "-o", str(trace), sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True, text=True, timeout=120, cwd="/", check=True)
    finally:
        mshare.unlink(name)
    address = f"{int(result.stdout):#x}"
    lines = trace.read_text().splitlines()
    first = next(index for index, line in enumerate(lines) if begin in line)
    last = next(index for index, line in enumerate(lines) if end in line)
    calls = []
    for line in lines[first + 1:last]:
        call = line.partition("(")[0]
        if call == "brk" or (call in ("mmap", "munmap") and not line.startswith(f"{call}({address}")):
            continue
        calls.append("stat" if call in STAT_CALLS else call)
    return calls


@pytest.mark.parametrize("readonly", [False, True])
def test_attach_opens_four_files_and_takes_one_lock(registry_path, name, readonly):
    events = events_of_one_attach(name, readonly)
    opened = [event[1] for event in events if event[0] == "open"]
    # The registry directory, the entry, the data object, the range file (the attach
    # mark): no registry lock file, no mshare_info, nothing opened twice.
    assert len(opened) == 4, events
    assert opened[0] == registry_path
    assert opened[1] == name
    assert os.path.basename(opened[2]).startswith("mshare-")
    assert opened[3].startswith(".range-")
    assert [event[0] for event in events].count("flock") == 1, events  # the mark alone


def test_attach_of_a_region_mapped_here_opens_only_its_entry(registry_path, name):
    """A region this process maps already, reached through the same entry file, is
    shared: its data object is not opened again, no range file, no lock."""
    events = events_of_one_attach(name, already_mapped=True)
    assert events == [["open", registry_path], ["open", name]], events


needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")


@needs_strace
def test_attach_makes_fifteen_system_calls(registry_path, name, tmp_path):
    calls = system_calls_of_one_attach(name, tmp_path)
    # The registry directory is root's (the tests run as root), so who this process is
    # need not be asked to check its owner.
    assert calls == SHM_ATTACH_SYSTEM_CALLS, calls


@needs_strace
def test_the_benchmarks_floor_under_an_attach_makes_the_same_system_calls(registry_path, name,
                                                                        tmp_path):
    """The figure that says what an attach's system calls alone cost must make exactly
    those of the attach above, no fewer."""
    calls = system_calls_of_one_attach(name, tmp_path, template=TRACE_ONE_FLOOR_ATTACH)
    assert calls == SHM_ATTACH_SYSTEM_CALLS, calls


@needs_strace
def test_attach_of_a_region_mapped_here_makes_seven(registry_path, name, tmp_path):
    calls = system_calls_of_one_attach(name, tmp_path, already_mapped=True)
    assert calls == ["openat", "stat",
                     "openat", "stat", "read", "close", "close"], calls


# One attach of a region not mapped here, its Python function calls counted with a
# profile hook: all of them, and those that parse an entry or make its plan.
COUNT_CALLS_OF_ONE_ATTACH = """
    import json, sys
    import mshare
    from mshare import attach_plan, entry
    if {made_anew}:
        mshare.unlink({name!r})  # the same name, an entry of other bytes
        mshare.create({name!r}, 1 << 20, hugepages="off").close()
    mshare.attach({name!r}).close()  # the first attach imports what it imports lazily
    if {made_anew}:
        mshare.unlink({name!r})
        mshare.create({name!r}, 1 << 20, hugepages="off").close()
    watched = {{attach_plan.Plan.__init__.__code__: "plans made", entry.parse.__code__: "parses"}}
    counts = {{"calls": 0, "plans made": 0, "parses": 0}}

    def profile(frame, event, argument):
        if event == "call":
            counts["calls"] += 1
            if frame.f_code in watched:
                counts[watched[frame.f_code]] += 1

    sys.setprofile(profile)
    region = mshare.attach({name!r})
    sys.setprofile(None)
    region.close()
    print(json.dumps(counts))
"""


def calls_of_one_attach(name, made_anew=False, hugepages="off"):
    created(name, hugepages)
    try:
        code = COUNT_CALLS_OF_ONE_ATTACH.format(name=name, made_anew=made_anew)
        return json.loads(run_python(code).stdout)
    finally:
        mshare.unlink(name)


def test_an_attach_of_a_known_entry_parses_nothing_and_makes_few_calls(registry_path, name):
    counts = calls_of_one_attach(name)
    # The entry's plan (parse, backend, paths, location check) is kept by its bytes.
    assert counts["plans made"] == counts["parses"] == 0, counts
    # Python functions, whoever calls them: 43 now, 44 before the data part became two
    # compiled calls, 77 before the registry part became one and the entry's plan was kept.
    assert counts["calls"] <= 43, counts


def test_a_known_entry_on_a_mount_unchanged_since_parses_nothing(registry_path, name, hugetlbfs):
    """The location's mount and the data's file system were checked at the first attach;
    with no mount come or gone since, the next attach checks neither again."""
    counts = calls_of_one_attach(name, hugepages="hugetlb")
    assert counts["plans made"] == counts["parses"] == 0, counts
    # The shm attach's, the mount view of the call, the plan's and the device's checks
    # found current, the backend's after-map step.
    assert counts["calls"] <= 52, counts


def test_an_entry_made_anew_under_the_same_name_gets_a_plan_of_its_own(registry_path, name):
    counts = calls_of_one_attach(name, made_anew=True)
    assert counts["plans made"] == counts["parses"] == 1, counts
