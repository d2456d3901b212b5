"""mshare: named shared-memory regions at one fixed address in every process.

>>> import mshare
>>> region = mshare.create("cache", 1 << 30, mode=0o640)      # in one process
>>> region = mshare.attach("cache")                          # in any other: same addr
>>> mshare.unlink("cache")
"""

import importlib.util as _importlib_util
import os as _os

# A source checkout on sys.path (the working directory) shadows the installed package
# and has no compiled core: say so, instead of failing on the first compiled import.
if _importlib_util.find_spec("mshare._core") is None and _os.path.exists(
        _os.path.join(_os.path.dirname(__file__), "_core.pyx")):
    raise ImportError(
        f"you are importing mshare from its source tree at {_os.path.dirname(__file__)} where "
        "the compiled core is not built; run from another directory or `pip install .`",
        name="mshare", path=__file__)
del _importlib_util, _os

from mshare.errors import (
    AddressConflictError,
    CorruptBookkeepingError,
    CorruptEntryError,
    HugePagesFallbackWarning,
    HugePagesUnavailableError,
    MshareError,
    OwnerDiedError,
    RegionFullError,
    UnsafeRegistryError,
)
from mshare.garbage import GcReport, gc
from mshare.info import RegionInfo, UnreadableRegion
from mshare.operations import attach, create, info, unlink
from mshare.operations import list_regions

# ``mshare.list()`` reads like ``os.listdir``; ``__all__`` names it ``list_regions`` so that
# ``from mshare import *`` never replaces the builtin ``list``.
list = list_regions
from mshare.pagetables import PageTableStats, RegionStats, pagetable_stats
from mshare.region import Region

__version__ = "0.1.0"

__all__ = [
    "AddressConflictError",
    "CorruptBookkeepingError",
    "CorruptEntryError",
    "GcReport",
    "HugePagesFallbackWarning",
    "HugePagesUnavailableError",
    "MshareError",
    "OwnerDiedError",
    "PageTableStats",
    "Region",
    "RegionFullError",
    "RegionInfo",
    "RegionStats",
    "UnreadableRegion",
    "UnsafeRegistryError",
    "attach",
    "create",
    "gc",
    "info",
    "list_regions",
    "pagetable_stats",
    "unlink",
]
