"""Isolation: a Ray node with its own /dev/shm and registry, as another machine has.

The node runs in its own mount namespace (``unshare --mount``, root only) with a tmpfs
on /dev/shm and another on the registry directory. A region made for one node cannot be
attached from the other, neither registry shows the other's regions, and when the node
dies its regions go with it.
"""

import os
import uuid

import pytest

from ray_helpers import (  # noqa: F401  (nothing_left is a fixture)
    nothing_left,
    assert_nothing_left, isolated_node, isolation_unavailable, ray_cluster, run_on,
    wait_until,
)

import mshare
import mshare.ray
from mshare.ray import NodeDiedError

SIZE = 1 << 20

_UNAVAILABLE = isolation_unavailable()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE))


@pytest.fixture(scope="module")
def cluster():
    # The head alone shares this test's /dev/shm; the isolated node is the second node.
    with ray_cluster(worker_nodes=0) as running:
        yield running


@pytest.fixture(scope="module")
def isolated(cluster):
    with isolated_node(cluster) as node:
        yield node


@pytest.fixture
def name(cluster):
    return f"iso-{uuid.uuid4().hex[:10]}"


def _registry_and_shm():
    """What this node's processes see: region names, and the data objects in /dev/shm."""
    return sorted(region.name for region in mshare.list()), sorted(os.listdir("/dev/shm"))


def _attach_and_write(name, size, data):
    with mshare.ray.attach(name, size, hugepages="off") as region:
        region.buf[:len(data)] = data
        return region.addr


def _try_attach(scoped):
    try:
        mshare.attach(scoped).close()
    except FileNotFoundError:
        return "missing"
    return "attached"


def test_a_region_of_one_node_cannot_be_attached_from_the_other(cluster, isolated, name):
    head, other = cluster.head, isolated.node_id
    try:
        # hugepages="off": the region must live in /dev/shm, which is what each node has
        # its own of (a hugetlbfs mount would be shared here).
        assert sorted(mshare.ray.ensure(name, SIZE, hugepages="off")) == sorted([head, other])
        run_on(other, _attach_and_write, name, SIZE, b"isolated")
        _attach_and_write(name, SIZE, b"head")
        head_scoped = mshare.ray.region_name(name, head)
        other_scoped = mshare.ray.region_name(name, other)

        assert _try_attach(other_scoped) == "missing"               # from the head
        assert run_on(other, _try_attach, head_scoped) == "missing"  # from the other node

        head_names, head_shm = _registry_and_shm()
        other_names, other_shm = run_on(other, _registry_and_shm)
        assert head_scoped in head_names and other_scoped not in head_names
        assert other_scoped in other_names and head_scoped not in other_names
        assert not set(other_shm) & set(head_shm)   # no file of one /dev/shm in the other

        # Separate registries: the same plain name can be created on both nodes.
        plain = f"{name}-plain"
        with mshare.create(plain, SIZE, hugepages="off"):
            run_on(other, _create_and_unlink, plain)
            mshare.unlink(plain)
    finally:
        mshare.ray.destroy(name, all_nodes=True)
    assert run_on(other, _registry_and_shm)[0] == []


def _create_and_unlink(name):
    with mshare.create(name, SIZE, hugepages="off"):
        mshare.unlink(name)


def test_a_dead_node_takes_its_regions_with_it(cluster, isolated, name):
    # Runs last in this module: it stops the isolated node.
    head, other = cluster.head, isolated.node_id
    try:
        mshare.ray.ensure(name, SIZE, hugepages="off")
        stats = mshare.ray.stats(name, other)
        assert stats.memory_bytes >= SIZE  # reserved in full, in the node's own /dev/shm
        isolated.stop()
        wait_until(lambda: other not in cluster.alive(), what="the isolated node leaving")
        # NodeDiedError, not TimeoutError at the deadline: the dead node is recognised.
        with pytest.raises(NodeDiedError, match="is dead"):
            mshare.ray.stats(name, other)
        assert mshare.ray.nodes(name) == [head]
        # Nothing of the dead node's region reached this node's registry or /dev/shm.
        assert mshare.list()[0].name == mshare.ray.region_name(name, head)
        assert len(mshare.list()) == 1
    finally:
        removed = mshare.ray.destroy(name, all_nodes=True)
    assert removed == [head]
