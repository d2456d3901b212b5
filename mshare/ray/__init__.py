"""Node-local mshare regions on Ray (``pip install 'mshare[ray]'``).

Ray's object store is node-local shared memory too, but immutable. Here each node gets
its own region per name, owned by a detached actor pinned to that node; every task and
actor scheduled there attaches it at the same address and writes in place, so the data
never travels through Ray. Ray is imported on first use, never by ``import mshare``.

>>> import ray, mshare.ray
>>> @ray.remote
... def add_one(lo, hi):
...     with mshare.ray.attach("state", 8 << 20) as region:    # get-or-create on this node
...         region.ndarray("float64")[lo:hi] += 1
>>> ray.get([add_one.remote(i * 1000, (i + 1) * 1000) for i in range(4)])
>>> mshare.ray.destroy("state", all_nodes=True)

Every call takes ``timeout`` (seconds): a dead node raises ``NodeDiedError`` and a
killed owner ``OwnerLostError``; nothing waits forever.
"""

import errno
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple

import mshare
from mshare.backends.selection import validate_hugepages
from mshare.names import validate_mode, validate_name, validate_size
from mshare.ray import cluster
from mshare.ray.cluster import DEFAULT_TIMEOUT, Deadline, RayObject
from mshare.ray.errors import NodeDiedError, OwnerLostError
from mshare.ray.owner import RegionOwner, RegionStats, local_info, size_mismatch, unlink_local
from mshare.ray.sizing import doctor_notes
from mshare.registry import registry_root

__all__ = [
    "NodeDiedError",
    "OwnerLostError",
    "RegionStats",
    "attach",
    "destroy",
    "doctor_notes",
    "ensure",
    "info",
    "nodes",
    "owner",
    "region_name",
    "stats",
]

_NODE_SEPARATOR = "@"


def region_name(name: str, node_id: Optional[str] = None) -> str:
    """The node-scoped name of region ``name`` in a node's registry: ``name@NODE_ID``.

    Nodes of a one-machine Ray cluster share ``/dev/shm``; the node id in the name keeps
    their regions apart. ``node_id`` defaults to the calling process's node.
    """
    validate_name(name)
    if node_id is None:
        node_id = cluster.current_node_id(cluster.import_ray())
    scoped = f"{name}{_NODE_SEPARATOR}{node_id}"
    validate_name(scoped)
    return scoped


def attach(name: str, size: Optional[int] = None, *, mode: int = 0o600, hugepages: str = "auto",
           readonly: bool = False, populate: bool = False,
           timeout: float = DEFAULT_TIMEOUT) -> mshare.Region:
    """Attach region ``name`` of the current node, creating it first if ``size`` is given.

    Call it from any task, actor or driver; it returns an ordinary ``mshare.Region``
    mapped at the same address in every process of this node (close it when done).
    A region that exists on this node is attached directly, with no call to Ray: the
    node's owner actor is needed only to create it, so that concurrent callers get one
    region. Without ``size`` the region must exist: ``FileNotFoundError`` otherwise.
    With ``size``, an existing region of another size raises ``ValueError``. ``mode``
    and ``hugepages`` apply when the region is created, as in ``mshare.create``.

    >>> with mshare.ray.attach("weights", 1 << 30) as region:
    ...     weights = region.array("w", (1024, 1024), "float32", exist_ok=True)
    """
    deadline = Deadline(timeout)
    if size is not None:
        validate_size(size)
    options = _creation_options(mode, hugepages)
    ray = cluster.import_ray()
    node_id = cluster.current_node_id(ray)
    scoped = region_name(name, node_id)
    try:
        region = mshare.attach(scoped, readonly=readonly)
    except FileNotFoundError:
        if size is None:
            # Fail fast and clearly instead of starting an owner that can only fail.
            raise FileNotFoundError(
                errno.ENOENT, f"no region {name!r} on this Ray node ({node_id}) yet: pass "
                "size= to create it, or call mshare.ray.ensure() first", name,
            ) from None
        _open_owner(ray, node_id, name, size, options, deadline)
        region = mshare.attach(scoped, readonly=readonly)
    if size is not None and region.size != size:
        region.close()
        raise size_mismatch(scoped, region.size, size)
    if populate:
        region.populate()
    return region


def ensure(name: str, size: int, *, mode: int = 0o600, hugepages: str = "auto",
           timeout: float = DEFAULT_TIMEOUT) -> Dict[str, mshare.RegionInfo]:
    """Make sure region ``name`` of ``size`` bytes exists on every alive node.

    Returns ``{node_id: RegionInfo}``. Owners start on all nodes at once. A node that
    dies meanwhile is left out (it is no longer alive); any other failure is raised.
    Nodes that join later get their region on first ``attach(name, size)``.
    """
    deadline = Deadline(timeout)
    validate_size(size)
    options = _creation_options(mode, hugepages)
    ray = cluster.import_ray()
    started = {node_id: _start_owner(ray, node_id, name, size, options)
               for node_id in cluster.alive_nodes(ray)}
    found: Dict[str, mshare.RegionInfo] = {}
    failures: List[Exception] = []
    for node_id, (handle, reply) in started.items():
        # Settle every node before raising, so that each owner that failed is stopped.
        try:
            found[node_id] = _settle_owner(ray, node_id, name, size, options, handle, reply,
                                           deadline)
        except NodeDiedError:
            continue
        except Exception as error:
            failures.append(error)
    if failures:
        raise failures[0]
    return found


def owner(name: str, node_id: Optional[str] = None, *,
          timeout: float = DEFAULT_TIMEOUT) -> RayObject:
    """The Ray actor handle of region ``name``'s owner on a node (default: this one).

    ``FileNotFoundError`` if there is no such region, ``OwnerLostError`` if the region
    exists but its owner is gone, ``NodeDiedError`` if the node is dead.
    """
    deadline = Deadline(timeout)
    ray = cluster.import_ray()
    node_id = _node(ray, node_id)
    return _owner_or_raise(ray, node_id, name, deadline)


def stats(name: str, node_id: Optional[str] = None, *,
          timeout: float = DEFAULT_TIMEOUT) -> RegionStats:
    """``RegionStats`` of region ``name`` on a node (default: this one), from its owner:
    owner pid, processes attached, bytes resident in the node's memory."""
    deadline = Deadline(timeout)
    ray = cluster.import_ray()
    node_id = _node(ray, node_id)
    handle = _owner_or_raise(ray, node_id, name, deadline)
    return cluster.fetch(ray, handle.stats.remote(), deadline,
                         what=f"stats of region {name!r}", node_id=node_id)


def info(name: str, node_id: Optional[str] = None, *,
         timeout: float = DEFAULT_TIMEOUT) -> mshare.RegionInfo:
    """The ``mshare.RegionInfo`` of region ``name`` on a node (default: this one)."""
    return stats(name, node_id, timeout=timeout).info


def nodes(name: str) -> List[str]:
    """Ids of the alive nodes where region ``name`` has an owner, sorted."""
    ray = cluster.import_ray()
    validate_name(name)
    prefix = cluster.owner_actor_name(registry_root(), f"{name}{_NODE_SEPARATOR}")
    owned = {actor_name[len(prefix):] for actor_name in cluster.owner_names(ray, prefix)}
    # A longer region name may extend ``name@``; a node id never holds the separator.
    owned = {node_id for node_id in owned if _NODE_SEPARATOR not in node_id}
    return sorted(owned.intersection(cluster.alive_nodes(ray)))


def destroy(name: str, node_id: Optional[str] = None, *, all_nodes: bool = False,
            timeout: float = DEFAULT_TIMEOUT) -> List[str]:
    """Unlink region ``name`` and stop its owner on one node (default: this one) or on
    every alive node; returns the ids of the nodes where a region was removed.

    Also removes a region whose owner was killed. Processes still mapping the region
    keep valid memory until they close it, as with ``mshare.unlink``; nothing is left
    in ``/dev/shm``. A dead node's regions died with it: naming one raises
    ``NodeDiedError``, and ``all_nodes`` skips it.
    """
    deadline = Deadline(timeout)
    validate_name(name)
    ray = cluster.import_ray()
    if all_nodes:
        if node_id is not None:
            raise ValueError("pass node_id or all_nodes=True, not both")
        targets = cluster.alive_nodes(ray)
    else:
        targets = [_node(ray, node_id)]
    registry = registry_root()
    started = {target: _start_removal(ray, target, name, registry) for target in targets}
    removed: List[str] = []
    failures: List[Exception] = []
    for target, removal in started.items():
        try:
            if _finish_removal(ray, target, name, registry, removal, deadline):
                removed.append(target)
        except NodeDiedError:
            if not all_nodes:
                raise
        except Exception as error:
            failures.append(error)
    if failures:
        raise failures[0]
    return sorted(removed)


# -- owners ------------------------------------------------------------------------------


def _owner_name(name: str, node_id: str) -> str:
    return cluster.owner_actor_name(registry_root(), region_name(name, node_id))


def _creation_options(mode: int, hugepages: str) -> Dict[str, Any]:
    """What ``mshare.create`` needs besides name and size, checked here to fail fast."""
    validate_mode(mode)
    validate_hugepages(hugepages)
    return {"mode": mode, "hugepages": hugepages}


def _start_owner(ray: ModuleType, node_id: str, name: str, size: int,
                 options: Dict[str, Any]) -> Tuple[RayObject, RayObject]:
    """Get or create the owner (race-free: ``get_if_exists``) and ask it to check in."""
    registry = registry_root()
    handle = cluster.remote(ray, RegionOwner).options(
        name=cluster.owner_actor_name(registry, region_name(name, node_id)),
        namespace=cluster.NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=0, **cluster.on_node(node_id, registry),
    ).remote(region_name(name, node_id), size, options)
    return handle, handle.check.remote(size)


def _settle_owner(ray: ModuleType, node_id: str, name: str, size: int, options: Dict[str, Any],
                  handle: RayObject, reply: RayObject, deadline: Deadline) -> mshare.RegionInfo:
    """Wait for an owner's check-in; replace, once, an owner that died."""
    what = f"the owner of region {name!r}"
    replaced = False
    while True:
        try:
            return cluster.fetch(ray, reply, deadline, what=what, node_id=node_id)
        except OwnerLostError:
            # get_if_exists may hand out an owner killed a moment ago; once its name is
            # free, a new owner adopts the region with its data. A new owner that dies
            # too cannot start on this node (its worker fails to import mshare, say).
            if replaced:
                raise
            cluster.kill_owner(ray, handle, _owner_name(name, node_id), deadline)
            replaced = True
        except (NodeDiedError, TimeoutError):
            raise
        except Exception:
            # An owner that could not create the region holds nothing: stop it so that
            # the next call starts afresh. One that runs (say, a size mismatch) stays.
            if not _holds_region(ray, handle, deadline, node_id):
                cluster.kill_owner(ray, handle, _owner_name(name, node_id), deadline)
            raise
        handle, reply = _start_owner(ray, node_id, name, size, options)


def _open_owner(ray: ModuleType, node_id: str, name: str, size: int, options: Dict[str, Any],
                deadline: Deadline) -> mshare.RegionInfo:
    handle, reply = _start_owner(ray, node_id, name, size, options)
    return _settle_owner(ray, node_id, name, size, options, handle, reply, deadline)


def _holds_region(ray: ModuleType, handle: RayObject, deadline: Deadline, node_id: str) -> bool:
    try:
        return cluster.fetch(ray, handle.holds_region.remote(), deadline,
                             what="an owner", node_id=node_id)
    except OwnerLostError:
        return False


def _owner_or_raise(ray: ModuleType, node_id: str, name: str, deadline: Deadline) -> RayObject:
    handle = cluster.find_owner(ray, _owner_name(name, node_id))
    if handle is not None:
        return handle
    cluster.require_alive(ray, node_id)
    registry = registry_root()
    probe = cluster.remote(ray, local_info).options(**cluster.on_node(node_id, registry))
    found = cluster.fetch(ray, probe.remote(region_name(name, node_id)), deadline,
                          what=f"looking up region {name!r}", node_id=node_id)
    if found is not None:
        raise OwnerLostError(
            f"region {name!r} exists on Ray node {node_id} but its owner is gone (killed or "
            "crashed): mshare.ray.attach(name, size) or ensure() adopts it, destroy() "
            "removes it", name,
        )
    raise FileNotFoundError(errno.ENOENT, f"no region {name!r} on Ray node {node_id}", name)


# -- removal -----------------------------------------------------------------------------


def _start_removal(ray: ModuleType, node_id: str, name: str,
                   registry: str) -> Tuple[Optional[RayObject], RayObject]:
    handle = cluster.find_owner(ray, _owner_name(name, node_id))
    if handle is not None:
        return handle, handle.destroy.remote()
    return None, _unlink_without_owner(ray, node_id, name, registry)


def _finish_removal(ray: ModuleType, node_id: str, name: str, registry: str,
                    removal: Tuple[Optional[RayObject], RayObject], deadline: Deadline) -> bool:
    handle, reply = removal
    what = f"destroying region {name!r}"
    if handle is None:
        return cluster.fetch(ray, reply, deadline, what=what, node_id=node_id)
    try:
        removed = cluster.fetch(ray, reply, deadline, what=what, node_id=node_id)
    except OwnerLostError:
        # The owner was killed before it could unlink: unlink without it.
        reply = _unlink_without_owner(ray, node_id, name, registry)
        removed = cluster.fetch(ray, reply, deadline, what=what, node_id=node_id)
    cluster.kill_owner(ray, handle, _owner_name(name, node_id), deadline)
    return removed


def _unlink_without_owner(ray: ModuleType, node_id: str, name: str, registry: str) -> RayObject:
    chore = cluster.remote(ray, unlink_local).options(**cluster.on_node(node_id, registry))
    return chore.remote(region_name(name, node_id))


def _node(ray: ModuleType, node_id: Optional[str]) -> str:
    if node_id is None:
        return cluster.current_node_id(ray)
    if not isinstance(node_id, str):
        raise TypeError(f"node_id must be str, not {type(node_id).__name__}")
    cluster.require_alive(ray, node_id)
    return node_id
