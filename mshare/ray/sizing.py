"""How to size Ray's object store next to mshare regions: lines for ``mshare doctor``.

Ray's object store (plasma) lives in ``/dev/shm`` like mshare's ``shm`` regions. Ray
sizes it when a node starts (30% of available memory, capped by the free space of
``/dev/shm``) and fills its file lazily; mshare reserves a region's space when it is
created. So regions that take the room Ray counted on make Ray's later writes fail with
``SIGBUS`` (ray-project/ray#14182). Both must fit in ``/dev/shm`` together.
"""

import importlib.metadata
import os
from typing import Final, List, Tuple

SHM_DIRECTORY: Final = "/dev/shm"
# Ray's defaults (ray._private.ray_constants): the share of available memory, the cap by
# free /dev/shm (which never goes below 10 GB), and the smallest store it accepts.
RAY_DEFAULT_PROPORTION: Final = 0.3
RAY_SHM_CAP_FLOOR: Final = 10**10
RAY_MINIMUM_STORE: Final = 75 << 20
# Keep this share of /dev/shm free for everything else that uses it.
MARGIN: Final = 0.1


def doctor_notes() -> List[str]:
    """The Ray sizing advice as lines of text; empty when Ray is not installed.

    Never imports Ray (that takes seconds), only asks for its version.

    >>> print("\\n".join(mshare.ray.doctor_notes()))
    """
    try:
        version = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return []
    from mshare.units import format_size

    shm = os.statvfs(SHM_DIRECTORY)
    shm_total = shm.f_frsize * shm.f_blocks
    shm_free = shm.f_frsize * shm.f_bavail
    regions, registry_note = _shm_regions()
    ray_default = _ray_default_store(_memory_available(), shm_free)
    room = int(shm_total * (1 - MARGIN)) - regions
    lines = [
        f"ray {version} is installed: its object store lives in {SHM_DIRECTORY} too",
        f"  {SHM_DIRECTORY}: {format_size(shm_total)} in all, {format_size(shm_free)} free; "
        f"shm regions {registry_note}",
        f"  a Ray node started now would take {format_size(ray_default)} for its object store "
        f"(30% of available memory, capped by free {SHM_DIRECTORY})",
        f"  per node: object_store_memory + mshare shm regions <= {SHM_DIRECTORY} size, "
        f"with {MARGIN:.0%} to spare",
    ]
    if room >= RAY_MINIMUM_STORE:
        suggestion = min(room, ray_default)
        lines.append(f"  here: ray start --object-store-memory={suggestion} "
                     f"(ray.init(object_store_memory=...)) leaves "
                     f"{format_size(shm_total - suggestion)} of {SHM_DIRECTORY} for regions")
    else:
        lines.append(f"  here: {SHM_DIRECTORY} has no room left for an object store next to the "
                     f"regions; as root: mount -o remount,size=<bigger> {SHM_DIRECTORY}")
    lines += [
        "  Ray fills its store lazily: if regions take its room, its writes die with SIGBUS;",
        "  RAY_preallocate_plasma_memory=1 makes a node claim the whole store when it starts",
        "  regions on hugetlbfs use the huge page pool, not /dev/shm",
    ]
    return lines


def _shm_regions() -> Tuple[int, str]:
    """Bytes of this registry's regions that live in /dev/shm, and words saying so."""
    import mshare
    from mshare.registry import registry_root
    from mshare.units import format_size

    try:
        regions = mshare.list()
    except OSError as error:
        return 0, f"in {registry_root()}: unknown ({error.strerror})"
    total = sum(region.size for region in regions if region.backend == "shm")
    return total, f"in {registry_root()}: {format_size(total)}"


def _memory_available() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("MemAvailable missing from /proc/meminfo")


def _ray_default_store(memory_available: int, shm_free: int) -> int:
    """What Ray's ``resolve_object_store_memory`` picks with no ``object_store_memory``."""
    cap = max(RAY_SHM_CAP_FLOOR, int(shm_free * 0.95))
    return min(int(memory_available * RAY_DEFAULT_PROPORTION), cap, 200 * 10**9)
