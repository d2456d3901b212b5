"""N tasks on one Ray node update disjoint slices of one float64 array, five ways:

- ``mshare long``: each of N long tasks attaches the node's region once and adds to its
  slice in place, round after round;
- ``mshare/task``: the README's pattern, one task per update, each attaching the region
  (locally: the region exists, so no call to its owner actor);
- ``mshare/owner``: the same, but each task first asks the owner actor, as every attach
  did before attaching became local: what that round trip costs;
- ``actor``: every update is sent to an actor that holds the array (what Ray users do
  for mutable state today);
- ``ray.put``: each round the driver puts a new copy, tasks return their new slices and
  the driver assembles the next array.

An update is one slice getting 1.0 added to every element; a round is one update of
each of the N slices. Reported: updates per second, mshare's speed-up (the per-task
pattern against the others), the data copied through Ray per round, and the memory the
array's state takes on the node, measured the same way for everyone: the growth of the
proportional set size (``Pss`` in ``/proc/PID/smaps_rollup``, which counts a shared page
once across the processes mapping it) summed over the driver and every process Ray
started, with the state alive after a warm-up round, less the same sum once the state
is gone (its region destroyed, its actor killed, its objects dropped). mshare's regions here use 4 KiB
pages (``hugepages="off"``): hugetlb pages are outside ``Pss``.

Run: ``PYTHONPATH=. python -m pytest bench/test_bench_ray.py`` (needs ``.[ray,bench]``).
"""

import os
import shutil
import tempfile
import uuid

import pytest

numpy = pytest.importorskip("numpy")
ray = pytest.importorskip("ray", reason="the Ray extra is not installed: pip install '.[ray]'")

import mshare  # noqa: E402
import mshare.ray  # noqa: E402
from bench.report import RAY_CONTENDERS as CONTENDERS, RAY_PATTERN as MSHARE_PATTERN  # noqa: E402

# (elements, rounds per timed run): a small array, where the cost of each update's trip
# through Ray dominates, and a large one, where copying memory does. A smoke run (CI)
# only proves every contender still runs.
if os.environ.get("MSHARE_BENCH_SMOKE") == "1":
    SIZES, TASKS = [(128 << 10, 2)], [2]
else:
    SIZES, TASKS = [(128 << 10, 100), (4 << 20, 10)], [2, 4, 8]
SUMMARY = {}   # (elements, tasks, contender) -> (updates/s, bytes through Ray per round, memory)


@pytest.fixture(scope="module")
def node(request):
    """One small Ray node whose workers import this mshare and this file."""
    temp = tempfile.mkdtemp(prefix="mshare-ray-", dir="/tmp")
    here = os.path.dirname(os.path.abspath(__file__))
    package_parent = os.path.dirname(os.path.dirname(mshare.__file__))
    with pytest.MonkeyPatch.context() as patch:
        # Ray puts the driver's working directory on its workers' path: from a source
        # checkout, that would shadow the installed mshare with the unbuilt one.
        patch.chdir(temp)
        patch.setenv("RAY_TMPDIR", temp)
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.setenv("MSHARE_ROOT", os.path.join(temp, "registry"))
        patch.setenv("PYTHONPATH", os.pathsep.join([package_parent, here, os.path.dirname(here)]))
        # 8 logical CPUs on 2 cores: Ray keeps one pooled worker per logical CPU, so all
        # N tasks find a warm worker in every run instead of waiting for new ones.
        ray.init(num_cpus=max(TASKS), object_store_memory=300 << 20, include_dashboard=False,
                 log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
    _print_summary(request.config)


def _slices(elements, tasks):
    bounds = numpy.linspace(0, elements, tasks + 1).astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


# -- the three contenders ------------------------------------------------------------------


@ray.remote
def update_in_place(name, elements, lo, hi, rounds):
    with mshare.ray.attach(name, elements * 8) as region:
        array = region.ndarray("float64")
        for _ in range(rounds):
            array[lo:hi] += 1.0
        del array


@ray.remote
def update_once(name, elements, lo, hi):
    with mshare.ray.attach(name, elements * 8) as region:
        array = region.ndarray("float64")
        array[lo:hi] += 1.0
        del array


@ray.remote
def update_once_via_owner(name, elements, lo, hi):
    ray.get(mshare.ray.owner(name).check.remote(elements * 8))
    with mshare.attach(mshare.ray.region_name(name)) as region:
        array = region.ndarray("float64")
        array[lo:hi] += 1.0
        del array


@ray.remote(num_cpus=0)
class Holder:
    def __init__(self, elements):
        self.array = numpy.zeros(elements)

    def add(self, lo, delta):
        self.array[lo:lo + len(delta)] += delta

    def total(self):
        return float(self.array.sum())


@ray.remote
def send_updates(holder, lo, hi, rounds):
    for _ in range(rounds):
        ray.get(holder.add.remote(lo, numpy.ones(hi - lo)))


@ray.remote
def new_slice(array, lo, hi):
    return array[lo:hi] + 1.0


class Mshare:
    def __init__(self, elements, tasks, rounds):
        self.name = f"bench-{uuid.uuid4().hex[:8]}"
        self.elements, self.rounds = elements, rounds
        self.slices = _slices(elements, tasks)
        self.region = mshare.ray.attach(self.name, elements * 8, hugepages="off")

    def run(self):
        ray.get([update_in_place.remote(self.name, self.elements, lo, hi, self.rounds)
                 for lo, hi in self.slices])

    def through_ray_per_round(self):
        return 0

    def total(self):
        return float(self.region.ndarray("float64").sum())

    def close(self):
        self.region.close()
        mshare.ray.destroy(self.name, all_nodes=True)


class MsharePerTask(Mshare):
    update = update_once

    def run(self):
        for _ in range(self.rounds):
            ray.get([self.update.remote(self.name, self.elements, lo, hi) for lo, hi in self.slices])


class MshareViaOwner(MsharePerTask):
    update = update_once_via_owner


class Actor:
    def __init__(self, elements, tasks, rounds):
        self.elements, self.rounds = elements, rounds
        self.slices = _slices(elements, tasks)
        self.holder = Holder.remote(elements)

    def run(self):
        ray.get([send_updates.remote(self.holder, lo, hi, self.rounds) for lo, hi in self.slices])

    def through_ray_per_round(self):
        return self.elements * 8                 # every slice's update, once

    def total(self):
        return ray.get(self.holder.total.remote())

    def close(self):
        ray.kill(self.holder)


class Put:
    def __init__(self, elements, tasks, rounds):
        self.elements, self.rounds = elements, rounds
        self.slices = _slices(elements, tasks)
        self.array = numpy.zeros(elements)

    def run(self):
        for _ in range(self.rounds):
            ref = ray.put(self.array)
            self.array = numpy.concatenate(
                ray.get([new_slice.remote(ref, lo, hi) for lo, hi in self.slices]))

    def through_ray_per_round(self):
        return 2 * self.elements * 8             # the new copy out, the new slices back

    def total(self):
        return float(self.array.sum())

    def close(self):
        self.array = None


APPROACHES = {"mshare long": Mshare, "mshare/task": MsharePerTask, "mshare/owner": MshareViaOwner,
              "actor": Actor, "ray.put": Put}


# -- measuring -----------------------------------------------------------------------------


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("elements, rounds", SIZES, ids=[f"{e * 8 >> 20}MiB" for e, _ in SIZES])
def test_update_slices(benchmark, node, elements, rounds, tasks, contender):
    approach = APPROACHES[contender](elements, tasks, rounds)
    try:
        approach.run()                           # warm up: workers busy, pages touched
        alive = node_pss()
        benchmark.pedantic(approach.run, rounds=5)
        assert approach.total() == elements * rounds * (1 + 5)   # every update landed
    finally:
        approach.close()
    # What the state held: the node with it alive, warm, against the node once it is
    # gone (warm workers stay either way, so their own growth is not counted).
    memory = alive - node_pss()
    benchmark.group = f"{tasks} tasks update slices of a {elements * 8 >> 20} MiB array"
    rate = tasks * rounds / benchmark.stats.stats.min
    SUMMARY[(elements, tasks, contender)] = (rate, approach.through_ray_per_round(), memory)
    # What results.md's Ray table is made of (bench/report.py).
    benchmark.extra_info.update(ray_contender=contender, array_bytes=elements * 8, tasks=tasks,
                                updates_per_s=rate, through_ray_per_round=approach.through_ray_per_round(),
                                state_memory=memory)


def node_pss():
    """``Pss`` summed over this driver and every process it started (Ray's raylet, object
    store, workers and actors are its descendants), in bytes."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, pending = 0, [os.getpid()]
    while pending:
        pid = pending.pop()
        pending += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                total += next(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:"))
        except (OSError, StopIteration):
            continue  # gone meanwhile, or a kernel thread
    return total


def _print_summary(config):
    if not SUMMARY:
        return
    lines = [f"mshare.ray against Ray's own ways: N tasks on one node ({os.cpu_count()} cores) "
             "add to disjoint slices of a float64 array; state memory: growth of Pss summed "
             "over the node's processes",
             f"  {'array':>7} {'tasks':>5} {'contender':12} {'updates/s':>10} {MSHARE_PATTERN + ' speed-up':>20}"
             f" {'through Ray/round':>18} {'state memory':>13}"]
    for (elements, tasks, contender), (rate, through, memory) in sorted(
            SUMMARY.items(), key=lambda item: (item[0][0], item[0][1],
                                               CONTENDERS.index(item[0][2]))):
        ours = SUMMARY.get((elements, tasks, MSHARE_PATTERN), (None,))[0]
        ratio = f"{ours / rate:.1f}x" if ours and contender != MSHARE_PATTERN else ""
        lines.append(f"  {elements * 8 >> 20:>4} MiB {tasks:>5} {contender:12} {rate:10,.0f} "
                     f"{ratio:>20} {through >> 20:>14} MiB {memory / (1 << 20):>9.1f} MiB")
    capture = config.pluginmanager.get_plugin("capturemanager")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    # A module fixture's teardown runs under output capture: step out of it to print.
    with capture.global_and_fixture_disabled():
        for line in [""] + lines:
            reporter.write_line(line)
