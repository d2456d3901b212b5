"""mshare.ray when things go wrong: attaching before any owner exists, an owner that
cannot start, a killed owner, a removed node, a deadline that passes, and two drivers
racing to create. Each gives a clear error or recovers correctly, fast, leaving nothing.
"""

import contextlib
import errno
import fcntl
import os
import subprocess
import sys
import textwrap

import pytest

from ray_helpers import (  # noqa: F401  (cluster, name, nothing_left are fixtures)
    cluster, name, nothing_left, NODE, assert_nothing_left, ray, ray_cluster, run_on, wait_until
)

import mshare
import mshare.ray
from mshare.ray import NodeDiedError, OwnerLostError

SIZE = 1 << 20


def _kill_owner(name, node_id):
    handle = mshare.ray.owner(name, node_id)
    ray.kill(handle, no_restart=True)
    wait_until(lambda: node_id not in mshare.ray.nodes(name), what="the owner's name released")


def test_attach_before_the_region_exists_says_how_to_create_it(cluster, name):
    # Each call has a finite deadline: a call that waited for an owner instead of
    # answering would raise TimeoutError, not the error asserted here.
    worker = cluster.workers[0]
    with pytest.raises(FileNotFoundError, match="pass size="):
        run_on(worker, _attach_without_size, name)
    with pytest.raises(FileNotFoundError, match="no region"):
        mshare.ray.stats(name, worker)
    with pytest.raises(FileNotFoundError, match="no region"):
        mshare.ray.owner(name, worker)
    assert mshare.ray.nodes(name) == []            # no owner was started for nothing
    assert mshare.ray.destroy(name, all_nodes=True) == []


def _attach_without_size(name):
    mshare.ray.attach(name)


def test_an_owner_that_cannot_start_raises_the_real_error_and_goes(cluster, name):
    with pytest.raises(OSError) as caught:
        mshare.ray.ensure(name, 1 << 40)            # far more than this machine's memory
    assert caught.value.errno in (errno.ENOSPC, errno.ENOMEM)   # the owner's own error
    assert mshare.ray.nodes(name) == []
    assert mshare.ray.ensure(name, SIZE)            # the name is free for a good size


def test_killed_owner_is_reported_then_adopted_with_its_data(cluster, name):
    head = cluster.head
    region = mshare.ray.attach(name, SIZE)
    region.buf[:4] = b"kept"
    first_owner = mshare.ray.stats(name).owner_pid
    _kill_owner(name, head)
    with pytest.raises(OwnerLostError, match="owner is gone"):
        mshare.ray.stats(name)
    assert bytes(region.buf[:4]) == b"kept"         # the memory outlives its owner
    with mshare.ray.attach(name, SIZE) as again:    # attaching needs no owner
        assert again.addr == region.addr
        assert bytes(again.buf[:4]) == b"kept"
    assert head not in mshare.ray.nodes(name)       # and started none
    with pytest.raises(OwnerLostError, match="owner is gone"):
        mshare.ray.stats(name)
    mshare.ray.ensure(name, SIZE)                   # a new owner adopts the region
    stats = mshare.ray.stats(name)
    assert stats.owner_pid != first_owner
    assert stats.info.creator_pid == first_owner    # adopted, not created anew
    region.close()


def test_destroy_removes_a_region_whose_owner_was_killed(cluster, name):
    worker = cluster.workers[0]
    mshare.ray.ensure(name, SIZE)
    _kill_owner(name, worker)
    assert mshare.ray.nodes(name) == [cluster.head]
    assert mshare.ray.destroy(name, all_nodes=True) == sorted([cluster.head, worker])


def test_a_call_that_passes_its_deadline_raises_timeout(cluster, name):
    # A new owner needs a worker process, which takes far longer than 10 ms to start.
    with pytest.raises(TimeoutError, match="did not answer within 0.01 s"):
        mshare.ray.ensure(name, SIZE, timeout=0.01)
    # The owner keeps starting and serves later calls.
    assert sorted(mshare.ray.ensure(name, SIZE)) == cluster.alive()


def test_a_removed_node_is_reported_without_hanging(cluster, name):
    extra = cluster.cluster.add_node(**NODE)
    cluster.cluster.wait_for_nodes()
    gone = extra.node_id
    try:
        assert gone in mshare.ray.ensure(name, SIZE)
        owner_pid = mshare.ray.stats(name, gone).owner_pid
        cluster.cluster.remove_node(extra)
        wait_until(lambda: _process_gone(owner_pid), what="the owner dying with its node")
        # NodeDiedError, not TimeoutError at the deadline: the dead node is recognised.
        for call in (lambda: mshare.ray.stats(name, gone), lambda: mshare.ray.owner(name, gone),
                     lambda: mshare.ray.destroy(name, gone)):
            with pytest.raises(NodeDiedError, match="is dead"):
                call()
        assert gone not in mshare.ray.ensure(name, SIZE)
        assert gone not in mshare.ray.nodes(name)
        assert gone not in mshare.ray.destroy(name, all_nodes=True)
    finally:
        # A dead machine takes its memory along; this node shared /dev/shm and the
        # registry with the test, so remove what it left behind by hand.
        with contextlib.suppress(FileNotFoundError):
            mshare.unlink(mshare.ray.region_name(name, gone))


def test_two_drivers_racing_to_create_share_one_owner_per_node(cluster, name, tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    holder = os.open(gate, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # both drivers wait here until both are connected
    code = textwrap.dedent(f"""
        import fcntl, os, ray, mshare.ray
        ray.init(address={cluster.cluster.address!r}, log_to_driver=False)
        print("ready", flush=True)
        fcntl.flock(os.open({str(gate)!r}, os.O_RDONLY), fcntl.LOCK_SH)
        found = mshare.ray.ensure({name!r}, {SIZE})
        print(sorted((node, info.creator_pid) for node, info in found.items()))
    """)
    drivers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/") for _ in range(2)]
    for driver in drivers:
        assert driver.stdout.readline() == "ready\n", driver.stderr.read()
    os.close(holder)  # both call ensure at once
    outputs = []
    for driver in drivers:
        out, err = driver.communicate(timeout=120)
        assert driver.returncode == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1]                  # the same owners created the regions
    assert mshare.ray.nodes(name) == cluster.alive()
    owners = [actor for actor in ray.util.list_named_actors(all_namespaces=True)
              if name in actor["name"]]
    assert len(owners) == len(cluster.alive())


def _connected_drivers():
    return [job for job in ray._private.state.jobs() if not job["IsDead"]]


def _process_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as status:
            return status.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
