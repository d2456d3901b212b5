"""Talking to Ray: the lazy import, the nodes, owner actor names, node-pinned options, and
waiting for answers with a deadline while turning Ray's failures into mshare's errors.

Every wait has a deadline: a dead node or a killed owner must be reported, never waited
for forever.
"""

import errno
import functools
import hashlib
import time
from types import ModuleType
from typing import Any, Callable, Dict, Final, List, Optional

from mshare.ray.errors import NodeDiedError, OwnerLostError

# Owners of every job live in one namespace, so that every driver finds the same owner.
NAMESPACE: Final = "mshare"
DEFAULT_TIMEOUT: Final = 60.0
_POLL_SECONDS: Final = 0.05
# Ray's objects (actor handles, object refs) are typed by Ray, which mshare never imports
# at module level; they are passed through as they come.
RayObject = Any


def import_ray() -> ModuleType:
    """Ray, connected; imported only here so that mshare itself never needs it."""
    try:
        import ray
    except ImportError:
        raise ImportError("mshare.ray needs Ray: pip install 'mshare[ray]'") from None
    if not ray.is_initialized():
        raise RuntimeError("mshare.ray needs a connected Ray: call ray.init() first")
    return ray


def current_node_id(ray: ModuleType) -> str:
    """The id of the Ray node this process runs on."""
    return ray.get_runtime_context().get_node_id()


def alive_nodes(ray: ModuleType) -> List[str]:
    """The ids of the cluster's live nodes, sorted."""
    return sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])


def node_alive(ray: ModuleType, node_id: str) -> bool:
    """True or False; ``ValueError`` for a node this cluster never had."""
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            return node["Alive"]
    raise ValueError(f"no Ray node {node_id!r} in this cluster")


def require_alive(ray: ModuleType, node_id: str) -> None:
    """``NodeDiedError`` unless ``node_id`` is alive."""
    if not node_alive(ray, node_id):
        raise node_died(node_id)


def node_died(node_id: str) -> NodeDiedError:
    """The error for a region on the dead node ``node_id``."""
    return NodeDiedError(f"Ray node {node_id} is dead: its mshare regions died with it", node_id)


def owner_actor_name(registry: str, scoped_name: str) -> str:
    """The actor name of the owner of ``scoped_name`` in ``registry``."""
    # The registry is part of the name: two registries may hold regions of one name.
    digest = hashlib.sha256(registry.encode()).hexdigest()[:16]
    return f"mshare-owner:{digest}:{scoped_name}"


def on_node(node_id: str, registry: str) -> Dict[str, Any]:
    """Options that run a task or actor on ``node_id`` only, with no CPU, in ``registry``.

    ``soft=False``: if the node is gone, Ray fails the call at once instead of running it
    elsewhere, where it would touch another node's memory. ``MSHARE_ROOT`` travels in the
    runtime environment so the node-side code uses the caller's registry.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {
        "num_cpus": 0,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False),
        "runtime_env": {"env_vars": {"MSHARE_ROOT": registry}},
    }


def find_owner(ray: ModuleType, actor_name: str) -> Optional[RayObject]:
    """The handle of the owner actor ``actor_name``, or None when there is none."""
    try:
        return ray.get_actor(actor_name, namespace=NAMESPACE)
    except ValueError:
        return None


def owner_names(ray: ModuleType, prefix: str) -> List[str]:
    """Names of the live owner actors whose name starts with ``prefix``."""
    return [
        actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == NAMESPACE and actor["name"].startswith(prefix)
    ]


class Deadline:
    """One time budget shared by every wait of an API call."""

    def __init__(self, timeout: float) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.timeout: float = timeout
        self._end: float = time.monotonic() + timeout

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        """Whether the budget is spent."""
        return time.monotonic() >= self._end


def fetch(ray: ModuleType, ref: RayObject, deadline: Deadline, *, what: str, node_id: str) -> Any:
    """``ray.get(ref)`` within the deadline, with Ray's failures said in mshare's terms.

    The node-side code's own exceptions (``FileNotFoundError``, ``ValueError``, ...) are
    raised as themselves, chained to Ray's error that carries the remote traceback.
    """
    try:
        return ray.get(ref, timeout=deadline.remaining())
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(
            errno.ETIMEDOUT,
            f"{what} on Ray node {node_id} did not answer within {deadline.timeout} s",
        ) from None
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, Exception):
            raise error.cause from error
        raise
    except (ray.exceptions.ActorUnschedulableError, ray.exceptions.TaskUnschedulableError) as error:
        # Hard node affinity: Ray refuses at once when the node is gone.
        raise node_died(node_id) from error
    except ray.exceptions.RayError as error:
        if not node_alive(ray, node_id):
            raise node_died(node_id) from error
        if isinstance(error, ray.exceptions.RayActorError):
            state = "could not start" if error.actor_init_failed else "died"
            raise OwnerLostError(
                f"{what} on Ray node {node_id} failed: the owner actor {state} ({error})"
            ) from error
        raise


def kill_owner(ray: ModuleType, handle: RayObject, actor_name: str, deadline: Deadline) -> None:
    """Kill an owner and wait until its name is free, so a new owner can take it."""
    ray.kill(handle, no_restart=True)
    while find_owner(ray, actor_name) is not None:
        if deadline.expired():
            raise TimeoutError(
                errno.ETIMEDOUT,
                f"owner actor {actor_name!r} was killed but still holds its name after "
                f"{deadline.timeout} s",
            )
        time.sleep(_POLL_SECONDS)


@functools.cache
def remote(ray: ModuleType, function_or_class: Callable[..., Any]) -> RayObject:
    """The Ray remote version of ``function_or_class``, made once per process."""
    return ray.remote(function_or_class)
