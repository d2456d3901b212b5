"""What runs on a node: the owner of one region (a detached Ray actor) and the two small
chores used when no owner is there to ask (look a region up, unlink it).

Everything here runs with ``MSHARE_ROOT`` set to the caller's registry by the runtime
environment (see ``cluster.on_node``), so plain ``mshare`` calls reach the right registry.
"""

import errno
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import mshare
from mshare.backends import get_backend
from mshare.info import RegionInfo
from mshare.registry import Registry


@dataclass(frozen=True)
class RegionStats:
    """One node's region, as its owner sees it."""

    node_id: str
    name: str            # the node-scoped name in that node's registry
    registry: str
    owner_pid: int
    info: RegionInfo     # ``info.attached``: processes on the node mapping it now
    memory_bytes: int    # memory its data holds on the node, however many processes map it


class RegionOwner:
    """Creates one node's region when it starts, keeps it mapped, answers for it and
    finally unlinks it.

    A region already in the registry (left by an owner that was killed) is adopted with
    its data, not replaced: processes that still map it keep seeing what newcomers see.
    A failure to start is kept and raised by every call rather than by ``__init__``,
    because Ray reports a failed ``__init__`` only as text, and callers deserve the real
    exception (``FileNotFoundError``, ``ValueError``, ``OSError(ENOSPC)``, ...).
    """

    def __init__(self, name: str, size: Optional[int], create_options: Dict[str, Any]) -> None:
        self._name = name
        self._region: Optional[mshare.Region] = None
        self._failure: Optional[Exception] = None
        try:
            self._region = _create_or_adopt(name, size, create_options)
        except Exception as error:
            self._failure = error

    def check(self, size: Optional[int]) -> RegionInfo:
        """The region's ``RegionInfo``; ``ValueError`` if it is not ``size`` bytes."""
        region = self._started()
        if size is not None and size != region.size:
            raise size_mismatch(self._name, region.size, size)
        return mshare.info(self._name)

    def holds_region(self) -> bool:
        """Whether this owner created or adopted its region and still maps it."""
        return self._region is not None

    def stats(self) -> RegionStats:
        """The region as this owner sees it on its node."""
        import ray

        region = self._started()
        return RegionStats(
            node_id=ray.get_runtime_context().get_node_id(), name=self._name,
            registry=region.registry_path, owner_pid=os.getpid(),
            info=mshare.info(self._name), memory_bytes=memory_bytes(self._name),
        )

    def destroy(self) -> bool:
        """Unlink the region and unmap it here; True if this call removed the name.

        The caller kills the actor afterwards. Processes still mapping the region keep
        valid memory until they close it, as with ``mshare.unlink``.
        """
        if self._region is None:
            return False
        self._region.close()
        self._region = None
        self._failure = FileNotFoundError(errno.ENOENT, "region was destroyed", self._name)
        return unlink_local(self._name)

    def _started(self) -> mshare.Region:
        if self._region is None:
            assert self._failure is not None  # set whenever the region is not
            raise self._failure
        return self._region


def _create_or_adopt(name: str, size: Optional[int], create_options: Dict[str, Any]) -> mshare.Region:
    if size is None:
        return mshare.attach(name)
    try:
        return mshare.create(name, size, **create_options)
    except FileExistsError:
        pass
    region = mshare.attach(name)
    if region.size != size:
        region.close()
        raise size_mismatch(name, region.size, size)
    return region


def size_mismatch(name: str, actual: int, wanted: int) -> ValueError:
    """The error for a region asked for with a size other than the one it has."""
    return ValueError(f"region {name!r} exists with {actual} bytes, not {wanted}; "
                      "destroy it first to change its size")


def local_info(name: str) -> Optional[RegionInfo]:
    """The region's ``RegionInfo`` on this node, or None."""
    try:
        return mshare.info(name)
    except FileNotFoundError:
        return None


def unlink_local(name: str) -> bool:
    """Unlink the region on this node; True if it was there."""
    try:
        mshare.unlink(name)
    except FileNotFoundError:
        return False
    return True


def memory_bytes(name: str) -> int:
    """Bytes of memory the region's data object holds: its allocated blocks, and on
    hugetlbfs its whole length, every page of which is reserved for it from create on
    (allocated when first touched).

    One number for the node, whoever touched the pages, and the proof that attaching
    copies nothing.
    """
    with Registry() as registry:
        entry, _ = registry.read_entry(name)
    info = os.stat(get_backend(entry.backend).path(entry.location))
    allocated = info.st_blocks * 512
    return max(allocated, info.st_size) if entry.backend == "hugetlb" else allocated
