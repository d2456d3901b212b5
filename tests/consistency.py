"""What a consistent registry looks like, checked file by file."""

import os

from helpers import shm_objects_of
from mshare.binding import foreign
from mshare.backends import get_backend
from mshare.registry import RANGE_PREFIX, TEMP_PREFIX, Registry, range_file_name

OWN_FILES = {".lock", "mshare_info"}


def visible_regions(registry_path):
    """Every entry, each checked complete: valid, its data object its own and large
    enough, its range recorded for it. Returns ``{name: Entry}``."""
    regions = {}
    with Registry(registry_path) as registry:
        for name in registry.names():
            entry, entry_stat = registry.read_entry(name)
            data_stat = os.stat(get_backend(entry.backend).path(entry.location))
            assert foreign(entry_stat, data_stat) is None, name
            assert data_stat.st_size >= entry.map_length, name
            claim, owner = registry.recorded_range(entry.addr, entry.end)
            assert claim is not None and claim.location == entry.location, name
            regions[name] = entry
    return regions


def assert_clean(registry_path, *, still_mapped=0):
    """Nothing but complete regions: no orphaned data object, no temporary file, and no
    range file beyond the regions' own and ``still_mapped`` unlinked-but-mapped ones."""
    regions = visible_regions(registry_path)
    with Registry(registry_path) as registry:
        objects = set(shm_objects_of(registry.registry_id))
    assert objects == {entry.location.lstrip("/") for entry in regions.values()}
    files = set(os.listdir(registry_path)) - OWN_FILES - set(regions)
    assert not [f for f in files if f.startswith(TEMP_PREFIX)], files
    own_ranges = {range_file_name(entry.addr, entry.end) for entry in regions.values()}
    extra = {f for f in files if f.startswith(RANGE_PREFIX)} - own_ranges
    assert len(extra) == still_mapped, extra
    assert files <= own_ranges | extra, files
    return regions
