"""Ray clusters for the tests: small nodes on this one machine, a private Ray temp
directory and mshare registry per cluster, remote helpers pinned to a node, and a node
with its own /dev/shm and registry (root only) to prove isolation.

Every node inherits the environment of the process that starts it, so ``MSHARE_ROOT``
and ``PYTHONPATH`` (set for the whole suite by conftest, pointing at the mshare under
test, installed or built in place) reach every worker.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from consistency import data_objects
from helpers import shm_objects_of

ray = pytest.importorskip("ray", reason="the Ray extra is not installed: pip install '.[test,ray]'")
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

import mshare.ray  # noqa: E402
from mshare import machine  # noqa: E402
from mshare.registry import Registry  # noqa: E402

BASE = "/tmp/mshare-tests"
# Small nodes: the machine has 2 cores and is shared with other test runs.
NODE = {"num_cpus": 2, "object_store_memory": 100 << 20}


class RayCluster:
    """A running ``Cluster`` with the driver connected, and the registry its nodes use."""

    def __init__(self, cluster, registry):
        self.cluster = cluster
        self.registry = registry

    @property
    def head(self):
        return self.cluster.head_node.node_id

    @property
    def workers(self):
        return sorted(node.node_id for node in self.cluster.worker_nodes)

    def alive(self):
        return sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])


@contextlib.contextmanager
def ray_cluster(worker_nodes=1):
    """A head and ``worker_nodes`` more, all on this machine, torn down afterwards."""
    registry = os.path.join(BASE, uuid.uuid4().hex)
    temp = tempfile.mkdtemp(prefix="mshare-ray-", dir="/tmp")  # short: Ray puts sockets here
    with pytest.MonkeyPatch.context() as patch:
        # Ray puts the driver's working directory on its workers' path: from a source
        # checkout, that would shadow the installed mshare with the unbuilt one.
        patch.chdir(temp)
        patch.setenv("RAY_TMPDIR", temp)
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.setenv("MSHARE_ROOT", registry)
        cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **NODE})
        try:
            for _ in range(worker_nodes):
                cluster.add_node(**NODE)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False)
            yield RayCluster(cluster, registry)
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
    shutil.rmtree(registry, ignore_errors=True)


def assert_nothing_left(registry):
    """No region entry, no data object in /dev/shm and no owner actor survive a test.

    Range files of regions that are unlinked but still mapped by a pooled Ray worker may
    remain: they go when that worker closes the region or exits.
    """
    owners = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
              if actor["namespace"] == "mshare"]
    assert not owners, f"owner actors left running: {owners}"
    if not os.path.isdir(registry):
        return
    with Registry(registry) as opened:
        objects = shm_objects_of(opened.registry_id)
    entries = [name for name in os.listdir(registry)
               if not name.startswith(".") and name != "mshare_info"]
    assert not entries, f"registry entries left behind: {entries}"
    assert not objects, f"data objects left in /dev/shm: {objects}"


def smaps_rollup(pid="self"):
    """A process's memory as the kernel accounts it (``/proc/PID/smaps_rollup``), in
    bytes by field (``Rss``, ``Pss``, ``Anonymous``, ...), and ``Resident``: every
    resident page, huge pages included."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[key] = int(parts[0]) * 1024
    # hugetlb pages are not part of Rss; the kernel counts them on lines of their own.
    fields["Resident"] = fields["Rss"] + fields.get("Shared_Hugetlb", 0) + fields.get("Private_Hugetlb", 0)
    return fields


def data_object_bytes(registry):
    """``{data object path: bytes held}`` of every data object of ``registry``, on every
    backend, from the file system itself: the blocks allocated, and on hugetlbfs (whose
    pages are all reserved at create, allocated at first touch) at least the length."""
    with Registry(registry) as opened:
        objects = data_objects(opened.registry_id)
    held = {}
    for path in objects:
        info = os.stat(path)
        mount = machine.mount_at(os.path.dirname(path))
        on_hugetlbfs = mount is not None and mount.fstype == machine.HUGETLBFS
        held[path] = max(info.st_blocks * 512, info.st_size) if on_hugetlbfs else info.st_blocks * 512
    return held


def on(node_id):
    """Options that run a task or actor on ``node_id`` only."""
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}


def run_on(node_id, function, *args, timeout=60):
    """Run ``function(*args)`` as a task on ``node_id`` and return its result."""
    return ray.get(ray.remote(num_cpus=0)(function).options(**on(node_id)).remote(*args),
                   timeout=timeout)


def wait_until(predicate, timeout=30, what="condition"):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.1)


# -- a node with its own /dev/shm and registry ----------------------------------------------


def isolation_unavailable():
    """Why a node with its own /dev/shm cannot be started here, or None."""
    if os.geteuid() != 0:
        return "needs root: the isolated node mounts its own tmpfs on /dev/shm"
    if shutil.which("unshare") is None:
        return "needs unshare(1) from util-linux"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "probe",
         "/dev/shm"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a new mount namespace: {probe.stderr.strip()}"
    return None


@contextlib.contextmanager
def isolated_node(cluster):
    """A Ray node in its own mount namespace, with a tmpfs on /dev/shm and another on the
    registry directory: its shared memory and registry are as separate as another
    machine's. Yields its node id; stops it (and with it both tmpfs) afterwards."""
    os.makedirs(cluster.registry, exist_ok=True)
    before = set(cluster.alive())
    script = (
        "mount -t tmpfs -o size=512m mshare-isolated /dev/shm && "
        f"mount -t tmpfs -o mode=1777 mshare-isolated-registry {cluster.registry} && "
        f"exec {sys.executable} -m ray.scripts.scripts start --address={cluster.cluster.address} "
        f"--block --num-cpus={NODE['num_cpus']} --object-store-memory={NODE['object_store_memory']}"
    )
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        wait_until(lambda: len(set(cluster.alive()) - before) == 1 or process.poll() is not None,
                   timeout=60, what="the isolated node joining")
        if process.poll() is not None:
            raise AssertionError(f"the isolated node did not start: {process.stderr.read()}")
        (node_id,) = set(cluster.alive()) - before
        yield IsolatedNode(node_id, process)
    finally:
        stop_process_group(process)


class IsolatedNode:
    def __init__(self, node_id, process):
        self.node_id = node_id
        self.process = process

    def stop(self):
        stop_process_group(self.process)


def stop_process_group(process):
    """``ray start --block`` stops its raylet and workers on SIGTERM; kill what is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# Fixtures shared by the Ray test modules, which import them by name.

@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node for the module."""
    with ray_cluster(worker_nodes=1) as running:
        yield running


@pytest.fixture(autouse=True)
def nothing_left(cluster):
    yield
    assert_nothing_left(cluster.registry)


@pytest.fixture
def name(cluster):
    """A fresh region name, destroyed on every node afterwards."""
    name = f"ray-{uuid.uuid4().hex[:10]}"
    yield name
    mshare.ray.destroy(name, all_nodes=True)
