"""The benchmark suite in smoke mode (tiny sizes, seconds long), so it never rots.

No timing is asserted: only that every figure was produced for mshare on every backend
(private huge-page mounts make thp and hugetlb available) and for the peers, and that the
run left nothing in /dev/shm.
"""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

for module in ("pytest_benchmark", "SharedArray", "matplotlib", "numpy"):
    pytest.importorskip(module, reason=f"the benchmark extras are not installed ({module}): "
                                       "pip install .[bench]")

REPOSITORY = Path(__file__).resolve().parent.parent
MSHARE_BACKENDS = ("mshare-shm", "mshare-thp", "mshare-hugetlb")
GROUPS = {"1 round trip", "2 attach", "3 attach and touch", "4a page tables by processes",
          "4b page tables by region size", "5 parallel scan"}
SCALE_GROUP, SCALE_BACKENDS = "10 scale: processes mapping one region", ("mshare-hugetlb",
                                                                         "shared_memory")
QUEUE_GROUPS = {"11 queue throughput, 1 to 1": ("mshare reserve",),
                "11 queue latency, 1 to 1": ("mshare reserve", "futex wake floor")}
DROP_IN_GROUPS = {"7a drop-in round trip", "7b drop-in attach", "7c drop-in attach and touch",
                  "7d drop-in page tables"}


def test_smoke_run_writes_every_figure(tmp_path, hugetlbfs, thp_root):
    before = set(os.listdir("/dev/shm"))
    scratch_before = set(glob.glob("/tmp/mshare-bench*"))
    # The package under test first, then the checkout (for `bench`); run from "/" so that
    # an unbuilt source tree never shadows the installed package.
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [p for p in os.environ.get("PYTHONPATH", "").split(":") if p] + [str(REPOSITORY)]))
    environment.pop("MSHARE_ROOT", None)  # the suite makes a private registry of its own
    run = subprocess.Popen([sys.executable, "-m", "bench", "--smoke", "--output", str(tmp_path)],
                           cwd="/", env=environment, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    stdout, stderr = run.communicate(timeout=1200)
    assert run.returncode == 0, stdout[-3000:] + stderr[-3000:]

    data = json.loads((tmp_path / "benchmark.json").read_text())
    measured = {(record["group"], record["extra_info"].get("backend"))
                for record in data["benchmarks"]}
    for group in GROUPS:
        for backend in MSHARE_BACKENDS + ("shared_memory", "posix_ipc", "SharedArray"):
            assert (group, backend) in measured, f"{backend} missing from {group!r}"
    for backend in SCALE_BACKENDS:
        assert (SCALE_GROUP, backend) in measured, f"{backend} missing from {SCALE_GROUP!r}"
    for group in DROP_IN_GROUPS:
        for backend in ("mshare.shared_memory", "shared_memory"):
            assert (group, backend) in measured, f"{backend} missing from {group!r}"
    for group, backends in QUEUE_GROUPS.items():
        for backend in backends:
            assert (group, backend) in measured, f"{backend} missing from {group!r}"
    report = (tmp_path / "results.md").read_text()
    assert "mshare-shm vs shared_memory" in report
    assert "mshare.shared_memory vs shared_memory" in report
    assert "SMOKE MODE" in report
    assert len(list(tmp_path.glob("*.png"))) == 6
    # The run names its regions bench-PID-N, and iceoryx2's files bench-PID-iox2-: other runs
    # on the machine are not its leftovers.
    left = {entry for entry in set(os.listdir("/dev/shm")) - before if f"bench-{run.pid}-" in entry}
    assert left == set()
    assert set(glob.glob("/tmp/mshare-bench*")) - scratch_before == set(), "registries left in /tmp"
