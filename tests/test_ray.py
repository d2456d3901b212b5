"""mshare.ray on a two-node Ray cluster (one machine): node-scoped names, one owner per
node, sharing in place between processes of a node, ensure, stats, destroy.

The nodes share one kernel and /dev/shm here, so these tests prove naming and
ownership; tests/test_ray_isolation.py proves isolation with a node of its own.
"""

import os
import subprocess
import sys

import pytest

from ray_helpers import (  # noqa: F401  (cluster, name, nothing_left are fixtures)
    cluster, name, nothing_left, assert_nothing_left, data_object_bytes, on, ray, ray_cluster, run_on,
    smaps_rollup,
)

import mshare
import mshare.ray

numpy = pytest.importorskip("numpy")

SIZE = 1 << 20


@pytest.fixture
def nodes(cluster):
    return [cluster.head, cluster.workers[0]]


def _fill(name, size, value):
    """In a task: attach (creating if needed), fill with ``value``, report what it saw
    and how this process's memory grew while it held the filled region mapped."""
    memory_before = smaps_rollup()
    with mshare.ray.attach(name, size) as region:
        array = region.ndarray("float64")
        before = float(array[0])
        array[:] = value
        memory_filled = smaps_rollup()
        del array
        return {"addr": region.addr, "before": before, "pid": os.getpid(),
                "node": mshare.ray.cluster.current_node_id(ray),
                "resident_growth": memory_filled["Resident"] - memory_before["Resident"],
                "anonymous_growth": memory_filled["Anonymous"] - memory_before["Anonymous"]}


@ray.remote(num_cpus=0)
class Peer:
    """A process of its own on a node, holding the region attached."""

    def attach(self, name, size):
        self.region = mshare.ray.attach(name, size)
        self.array = self.region.ndarray("int64")
        return self.region.addr, os.getpid()

    def write(self, index, value):
        self.array[index] = value

    def read(self, index):
        return int(self.array[index])

    def close(self):
        del self.array
        self.region.close()


def test_region_name_carries_the_node(cluster, nodes):
    head, worker = nodes
    assert mshare.ray.region_name("weights", head) == f"weights@{head}"
    assert mshare.ray.region_name("weights") == f"weights@{head}"   # the driver's node
    assert run_on(worker, mshare.ray.region_name, "weights") == f"weights@{worker}"
    with pytest.raises(ValueError):
        mshare.ray.region_name("a/b", head)
    with pytest.raises(ValueError):
        mshare.ray.region_name("x" * 240, head)   # the node id would not fit


def test_one_owner_per_node_however_many_tasks_race_to_create(cluster, nodes, name):
    fill = ray.remote(num_cpus=0)(_fill)
    refs = [fill.options(**on(node)).remote(name, SIZE, 1.0) for node in nodes for _ in range(4)]
    seen = ray.get(refs, timeout=120)
    assert {report["node"] for report in seen} == set(nodes)
    assert mshare.ray.nodes(name) == sorted(nodes)
    owners = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
              if actor["namespace"] == "mshare"]
    assert len(owners) == 2
    pids = set()
    for node in nodes:
        stats = mshare.ray.stats(name, node)
        assert stats.node_id == node
        assert stats.info.creator_pid == stats.owner_pid   # the owner created it
        assert "RegionOwner" in _command_line(stats.owner_pid)
        pids.add(stats.owner_pid)
    assert len(pids) == 2


def _command_line(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return cmdline.read().decode(errors="replace")


def test_processes_of_one_node_share_writes_at_one_address(cluster, nodes, name):
    for node in nodes:
        first, second = Peer.options(**on(node)).remote(), Peer.options(**on(node)).remote()
        (addr_1, pid_1), (addr_2, pid_2) = ray.get(
            [first.attach.remote(name, SIZE), second.attach.remote(name, SIZE)], timeout=60)
        assert pid_1 != pid_2
        assert addr_1 == addr_2
        ray.get(first.write.remote(7, 1234), timeout=30)
        assert ray.get(second.read.remote(7), timeout=30) == 1234
        ray.get(second.write.remote(8, -5), timeout=30)
        assert ray.get(first.read.remote(8), timeout=30) == -5
        ray.get([first.close.remote(), second.close.remote()], timeout=30)
        for peer in (first, second):
            ray.kill(peer)


def test_nodes_get_different_regions(cluster, nodes, name):
    head, worker = nodes
    run_on(head, _fill, name, SIZE, 1.0)
    report = run_on(worker, _fill, name, SIZE, 2.0)
    assert report["before"] == 0.0                   # a fresh region, not the head's
    assert run_on(head, _fill, name, SIZE, 3.0)["before"] == 1.0
    assert run_on(worker, _fill, name, SIZE, 4.0)["before"] == 2.0
    assert mshare.ray.info(name, head).name != mshare.ray.info(name, worker).name


def test_ensure_reaches_every_alive_node_once(cluster, nodes, name):
    first = mshare.ray.ensure(name, SIZE, mode=0o640, hugepages="off")
    assert sorted(first) == sorted(nodes)
    assert all(info.size == SIZE and info.mode == 0o640 and info.backend == "shm"
               for info in first.values())
    again = mshare.ray.ensure(name, SIZE)
    assert {node: info.created for node, info in again.items()} == \
        {node: info.created for node, info in first.items()}
    with pytest.raises(ValueError, match="exists with 1048576 bytes"):
        mshare.ray.ensure(name, 2 * SIZE)
    assert mshare.ray.nodes(name) == sorted(nodes)   # the mismatch stopped nothing


def test_attach_from_the_driver_and_readonly(cluster, name):
    with mshare.ray.attach(name, SIZE) as region:
        region.buf[:5] = b"hello"
        with mshare.ray.attach(name, readonly=True) as reader:
            assert reader.addr == region.addr
            assert bytes(reader.buf[:5]) == b"hello"
            with pytest.raises(TypeError):
                reader.buf[0] = 1
    with pytest.raises(ValueError, match="not 2097152"):
        mshare.ray.attach(name, 2 * SIZE)


def test_stats_report_owner_and_memory(cluster, nodes, name):
    head, worker = nodes
    mshare.ray.ensure(name, 8 * SIZE)
    stats = mshare.ray.stats(name, worker)
    allocations = data_object_bytes(cluster.registry)   # one region per node
    assert stats.memory_bytes in allocations.values()   # what the node's file system says
    assert stats.memory_bytes >= 8 * SIZE               # reserved in full when created
    assert stats.registry == cluster.registry
    assert stats.name == mshare.ray.region_name(name, worker)
    assert stats.info.attached == 1               # the owner
    fill = ray.remote(num_cpus=0)(_fill)
    fills = ray.get([fill.options(**on(worker)).remote(name, 8 * SIZE, 1.0) for _ in range(3)],
                    timeout=60)
    # No copies: each filling process has the whole region resident, none of it in
    # private (anonymous) memory, and the node holds still one region's data.
    for filled in fills:
        assert filled["resident_growth"] >= 8 * SIZE, filled
        assert filled["anonymous_growth"] < 4 * SIZE, filled
    assert data_object_bytes(cluster.registry) == allocations
    assert mshare.ray.stats(name, worker).memory_bytes == stats.memory_bytes
    assert mshare.ray.info(name, worker).size == 8 * SIZE
    handle = mshare.ray.owner(name, worker)
    assert ray.get(handle.stats.remote(), timeout=30).owner_pid == stats.owner_pid
    assert mshare.ray.stats(name, head).owner_pid != stats.owner_pid


def _count_under_lock(name, rounds):
    with mshare.ray.attach(name, SIZE) as region:
        counter = region.array("counter", (1,), "int64", exist_ok=True)
        for _ in range(rounds):
            with region.lock(timeout=30):
                counter[0] += 1
        del counter


def test_named_arrays_and_the_lock_work_in_tasks(cluster, nodes, name):
    worker = nodes[1]
    count = ray.remote(num_cpus=0)(_count_under_lock)
    ray.get([count.options(**on(worker)).remote(name, 2000) for _ in range(4)], timeout=120)
    with mshare.ray.attach(name, SIZE) as region:   # the head's region: untouched
        assert region.names() == []
    total = run_on(worker, _read_counter, name)
    assert total == 4 * 2000


def _read_counter(name):
    with mshare.ray.attach(name) as region:
        value = int(region.array("counter")[0])
    return value


def test_destroy_one_node_then_all(cluster, nodes, name):
    head, worker = nodes
    mshare.ray.ensure(name, SIZE)
    assert mshare.ray.destroy(name, worker) == [worker]
    assert mshare.ray.nodes(name) == [head]
    with pytest.raises(FileNotFoundError, match="no region"):
        mshare.ray.stats(name, worker)
    assert mshare.ray.info(name, head).size == SIZE
    assert mshare.ray.destroy(name, all_nodes=True) == [head]
    assert mshare.ray.nodes(name) == []
    assert mshare.list() == []
    assert mshare.ray.destroy(name, all_nodes=True) == []   # nothing left to destroy


def test_destroy_leaves_attached_memory_valid(cluster, name):
    region = mshare.ray.attach(name, SIZE)
    region.buf[:3] = b"abc"
    assert mshare.ray.destroy(name) == [cluster.head]
    assert mshare.list() == []
    region.buf[3:6] = b"def"                       # still mapped, as after mshare.unlink
    assert bytes(region.buf[:6]) == b"abcdef"
    region.close()


def test_bad_arguments(cluster, nodes, name):
    with pytest.raises(ValueError):
        mshare.ray.attach(name, 0)
    with pytest.raises(TypeError):
        mshare.ray.attach(name, True)
    with pytest.raises(ValueError):
        mshare.ray.attach(name, SIZE, mode=0o1000)
    with pytest.raises(ValueError, match="hugepages"):
        mshare.ray.ensure(name, SIZE, hugepages="sometimes")
    with pytest.raises(ValueError, match="timeout"):
        mshare.ray.ensure(name, SIZE, timeout=0)
    with pytest.raises(ValueError, match="not both"):
        mshare.ray.destroy(name, nodes[0], all_nodes=True)
    with pytest.raises(ValueError, match="no Ray node"):
        mshare.ray.stats(name, "f" * 56)
    with pytest.raises(TypeError):
        mshare.ray.stats(name, 7)
    assert mshare.ray.nodes(name) == []


def test_needs_a_connected_ray_and_imports_it_lazily(cluster):
    code = (
        "import sys, mshare, mshare.ray\n"
        "assert 'ray' not in sys.modules, 'importing mshare.ray imported ray'\n"
        "try:\n"
        "    mshare.ray.attach('x', 4096)\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert "call ray.init() first" in result.stdout


def test_doctor_notes(cluster, monkeypatch):
    notes = mshare.ray.doctor_notes()
    text = "\n".join(notes)
    assert "object store" in text and "/dev/shm" in text
    assert "--object-store-memory=" in text
    import importlib.metadata

    def missing(package):
        raise importlib.metadata.PackageNotFoundError(package)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert mshare.ray.doctor_notes() == []
