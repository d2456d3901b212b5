"""`python -m mshare demo`, run as a user would: its table's numbers, the pointer its workers
follow, what it says on a machine without huge pages, and nothing left behind, also after a
real Ctrl-C."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hugepage_fixtures import require_root

REPOSITORY = Path(__file__).resolve().parent.parent
SHM = "/dev/shm"
ROW = re.compile(r"^(mshare|shared_memory)\s+(\w+)\s+(\S+)\s+([\d.]+) ms\s+(-?[\d,]+) KiB\s+(yes|no)\s+(yes|no)$")
# Run inside a mount namespace of its own: unmount every hugetlbfs and huge-page tmpfs there
# (nowhere else), then run the demo, as on a machine where nobody set huge pages up.
WITHOUT_HUGE_PAGES = """
import os, subprocess, sys
for line in reversed(open("/proc/self/mountinfo").read().splitlines()):
    fields, (fstype, _, options) = line.split(" - ")[0].split(), line.split(" - ")[1].partition(" ")
    huge_tmpfs = fstype == "tmpfs" and "huge=" in options and "huge=never" not in options
    if fstype == "hugetlbfs" or huge_tmpfs:
        subprocess.run(["umount", "--lazy", fields[4]], check=True)
os.execv(sys.executable, [sys.executable, "-m", "mshare", "demo", *sys.argv[1:]])
"""


def environment():
    # The package under test first (installed or built in place), the checkout after it,
    # and run from "/" so that an unbuilt source tree never shadows the installed package.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(":") if p] + [str(REPOSITORY)]
    return dict(os.environ, PYTHONPATH=":".join(paths))


def start_demo(*arguments, command=None):
    # A session of its own, so the test can signal it the way a terminal would.
    return subprocess.Popen(
        (command or [sys.executable, "-m", "mshare", "demo"]) + list(arguments), cwd="/",
        env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def rows_of(output):
    rows = {}
    for line in output.splitlines():
        match = ROW.match(line.strip())
        if match:
            label, backend, page_size, ms, kib, same, pointer = match.groups()
            rows[label] = {"backend": backend, "page_size": page_size, "ms": float(ms),
                           "kib": float(kib.replace(",", "")), "same_address": same == "yes",
                           "pointer_works": pointer == "yes"}
    return rows


def left_in_shm(before, registry_path, tag):
    """What this demo added to /dev/shm and left there.

    Other programs on a shared machine may add and remove entries meanwhile, so only the
    demo's own count: its registry's data objects and the blocks named after its regions.
    """
    from mshare.registry import Registry

    with Registry(registry_path) as registry:
        registry_id = registry.registry_id
    return {entry for entry in set(os.listdir(SHM)) - before
            if tag in entry or f"-{registry_id}-" in entry}


def tag_of(line):
    """The unique part of the region names, from a progress line "[1/2] ...: region NAME"."""
    return re.search(r"region (\S+)", line).group(1).split("demo-", 1)[1]


def demo_processes(tag):
    """Processes whose command line names this demo's regions (its workers)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                if tag.encode() in file.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_demo_table_numbers(registry_path, backend):
    before = set(os.listdir(SHM))
    demo = start_demo("--size", "256M", "--workers", "4", "--hugepages", backend.hugepages)
    output, errors = demo.communicate(timeout=300)
    assert demo.returncode == 0, errors

    assert "a 256M region, 4 workers" in output
    assert "A fixed address means that a pointer one process stores in a region is valid" in output
    assert all(f"worker {n}/4 attached" in output for n in range(1, 5))
    rows = rows_of(output)
    assert set(rows) == {"mshare", "shared_memory"}, output
    assert rows["mshare"]["same_address"] is True
    # Every mshare worker followed the creator's pointer to its message; in shared_memory's
    # workers the same number points outside their mapping, and they say so.
    assert rows["mshare"]["pointer_works"] is True
    assert rows["shared_memory"]["pointer_works"] is False
    assert "every mshare worker followed it to the message" in output
    assert rows["mshare"]["backend"] == backend.name, output
    assert rows["shared_memory"]["page_size"] == "4K"
    # 256 MiB in 4 KiB pages needs 512 KiB of page tables in every worker that maps it.
    # The counter is system-wide: other programs starting or ending meanwhile move it by a
    # few hundred KiB, hence the wide bounds (huge pages would show ~0).
    assert 256 <= rows["shared_memory"]["kib"] <= 2048, output
    if backend.name == "shm":
        assert rows["mshare"]["page_size"] == "4K", output
        assert 256 <= rows["mshare"]["kib"] <= 2048, output
        # --hugepages off: what huge pages would show, and how to get them here.
        assert "With huge pages this machine's table would show:" in output
        assert "demo --hugepages auto uses them" in output or "One command enables them" in output
    else:
        # 2 MiB pages (shared PMD tables with hugetlb, 512 times fewer entries with thp):
        # a worker adds at most a table page or two.
        assert rows["mshare"]["page_size"] == "2M", output
        assert rows["mshare"]["kib"] < 128, output
    assert all(row["ms"] > 0 for row in rows.values())
    assert re.search(r"shared_memory / mshare\s+[\d.]+x\s+(>= )?[\d,.]+x", output), output
    tag = tag_of(next(line for line in output.splitlines() if line.startswith("[1/2]")))
    assert left_in_shm(before, registry_path, tag) == set()


@pytest.mark.parametrize("phase", ["[1/2] mshare", "[2/2] shared_memory"])
def test_ctrl_c_leaves_nothing_behind(registry_path, phase):
    before = set(os.listdir(SHM))
    # Sixteen workers take a good part of a second to start: time for the signal to land.
    demo = start_demo("--size", "256M", "--workers", "16")
    tag = None
    for line in demo.stdout:
        if line.startswith(phase):
            tag = tag_of(line)
            break
    assert tag, "the demo never reached the phase to interrupt"
    os.killpg(demo.pid, signal.SIGINT)
    output, errors = demo.communicate(timeout=120)

    assert demo.returncode == 130, output + errors
    assert "interrupted" in errors
    assert "Traceback" not in errors
    assert demo_processes(tag) == []
    assert left_in_shm(before, registry_path, tag) == set()


def test_without_huge_pages_it_shows_what_they_would_give_and_the_command(registry_path):
    require_root()
    before = set(os.listdir(SHM))
    demo = start_demo("--size", "256M", "--workers", "2", command=[
        "unshare", "--mount", "--propagation", "private", sys.executable, "-c", WITHOUT_HUGE_PAGES])
    output, errors = demo.communicate(timeout=300)
    assert demo.returncode == 0, errors

    rows = rows_of(output)
    assert rows["mshare"]["backend"] == "shm", output
    measured = rows["mshare"]["kib"]
    # The figures huge pages would give, worked out for this region and this machine's page
    # size, next to the measured 4 KiB-page figure; then why they are missing and the command.
    assert (f"hugetlb  2M pages: page tables ~4 KiB per worker instead of {measured:,.0f} KiB"
            in output), output
    assert "thp      2M pages: page tables ~4 KiB per worker, 512x fewer page faults" in output
    # Why, in the backends' own words (as mshare doctor gives them).
    assert re.search(r"^Not here: hugetlb: [^;]+; thp: .+ doctor says more\)\.$", output, re.MULTILINE), output
    mshare_script = os.path.join(os.path.dirname(sys.executable), "mshare")
    assert re.search(rf"One command enables them, as root: sudo {re.escape(mshare_script)} "
                     r"mount --hugepages \d+M$", output, re.MULTILINE), output
    assert f"then: {mshare_script} demo --hugepages hugetlb" in output
    tag = tag_of(next(line for line in output.splitlines() if line.startswith("[1/2]")))
    assert left_in_shm(before, registry_path, tag) == set()


def default_registries_as_they_are():
    """Where the demo's regions would go without a registry of its own: the default
    registries (the shared one and this user's private one) and every name in them, with
    modification times (a registry's index file is rewritten in place, its directory
    changes with every entry and range file), and any registry a demo made for itself.
    Other tests' registries, elsewhere in /dev/shm, may change meanwhile."""
    from mshare.registry_root import SHM_DIRECTORY, private_root, shared_root

    roots = [shared_root(), private_root(os.geteuid())] + [
        os.path.join(SHM_DIRECTORY, name) for name in os.listdir(SHM_DIRECTORY)
        if name.startswith("mshare-demo-") and os.path.isdir(os.path.join(SHM_DIRECTORY, name))]
    found = {}
    for root in filter(os.path.lexists, roots):
        found[root] = os.lstat(root).st_mtime_ns
        for directory, names, files in os.walk(root):
            for name in names + files:
                inner = os.path.join(directory, name)
                found[inner] = os.lstat(inner).st_mtime_ns
    return found


@pytest.mark.parametrize("interrupted", [False, True], ids=["run", "ctrl-c"])
def test_without_mshare_root_it_leaves_the_default_registry_untouched(interrupted):
    """A user's first `mshare demo` leaves the default registry as it found it (or absent):
    the demo keeps its regions in a registry of its own, not in the default one (where its
    first region would make the address index), and removes it, also after a Ctrl-C."""
    before = default_registries_as_they_are()
    environment_without_root = {key: value for key, value in environment().items()
                                if key != "MSHARE_ROOT"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "mshare", "demo", "--size", "64M", "--workers", "2"], cwd="/",
        env=environment_without_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    if interrupted:
        for line in demo.stdout:
            if line.startswith("[1/2] mshare"):
                break
        os.killpg(demo.pid, signal.SIGINT)
    output, errors = demo.communicate(timeout=300)
    assert demo.returncode == (130 if interrupted else 0), output + errors
    assert default_registries_as_they_are() == before
