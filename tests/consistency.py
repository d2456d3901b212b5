"""What a consistent registry looks like, judged from the documented format alone.

This reader is written from the README's "Registry files" and "Entry format" sections
and the address index format in docs/performance.md, not from mshare's own reader: a bug in production's parser or checks cannot make a
broken registry look consistent here. Only ``struct``, ``zlib`` and ``os`` are used.
"""

import os
import stat
import struct
import zlib
from dataclasses import dataclass

from helpers import huge_page_objects_of, shm_objects_of
from mshare.addresses import arena
from mshare.registry import Registry

INDEX_DIRECTORY = ".index"
OWN_FILES = {".lock", "mshare_info", INDEX_DIRECTORY}
RANGE_PREFIX = ".range-"
TEMP_PREFIX = ".tmp-"
SHM = "/dev/shm"
# An address index file's header, field by field as docs/performance.md gives it.
INDEX_HEADER = struct.Struct("<4s H H I I q q q")
GiB = 1 << 30
# The fixed part, field by field as the README's table gives it (108 bytes).
FIXED = struct.Struct("<4sHH II QQQQQQ d 16s 16s HH")
CRC = struct.Struct("<I")


@dataclass(frozen=True)
class DocumentedEntry:
    name: str
    addr: int
    size: int
    data_length: int
    map_length: int
    reserved_length: int
    page_size: int
    backend: str
    region_id: str
    location: str

    @property
    def data_path(self):
        # POSIX shm names live under /dev/shm; file backends store the path itself.
        return SHM + self.location if self.backend == "shm" else self.location

    @property
    def range_file_end(self):
        return self.addr + self.reserved_length


def read_documented_entry(registry_path, name):
    """Parse entry ``name`` by the documented layout; fail naming the broken rule."""
    with open(os.path.join(registry_path, name), "rb") as file:
        data = file.read()
    assert len(data) >= FIXED.size + CRC.size, (name, "shorter than the fixed part")
    (magic, version, fixed_length, _creator, flags, addr, size, data_length, map_length,
     reserved_length, page_size, _created, backend, region_id, location_length,
     _padding) = FIXED.unpack_from(data)
    assert (magic, version, fixed_length, flags) == (b"MSHR", 1, 108, 0), (name, magic, version)
    assert len(data) == fixed_length + location_length + CRC.size, (name, "length")
    (crc,) = CRC.unpack_from(data, fixed_length + location_length)
    assert crc == zlib.crc32(data[:fixed_length + location_length]), (name, "checksum")
    assert page_size > 0 and page_size & (page_size - 1) == 0, (name, page_size)
    assert size <= data_length and data_length % page_size == 0, (name, size, data_length)
    assert data_length - page_size < size, (name, "data length is not size rounded up")
    assert data_length <= map_length <= reserved_length, (name, map_length, reserved_length)
    return DocumentedEntry(
        name=name, addr=addr, size=size, data_length=data_length, map_length=map_length,
        reserved_length=reserved_length, page_size=page_size,
        backend=backend.rstrip(b"\0").decode("ascii"), region_id=region_id.decode("ascii"),
        location=data[fixed_length:fixed_length + location_length].decode("utf-8"),
    )


def region_names(registry_path):
    return sorted(f for f in os.listdir(registry_path)
                  if f not in OWN_FILES and not f.startswith("."))


def range_files(registry_path):
    """``{file name: (start, end, recorded location)}`` of every ``.range-START-END``."""
    ranges = {}
    for file_name in os.listdir(registry_path):
        if not file_name.startswith(RANGE_PREFIX):
            continue
        start, end = (int(part, 16) for part in file_name[len(RANGE_PREFIX):].split("-"))
        with open(os.path.join(registry_path, file_name)) as file:
            _backend, _, location = file.read().strip().partition(" ")
        ranges[file_name] = (start, end, location)
    return ranges


def indexed_gibs(registry_path):
    """Arena GiBs (counted from the arena's start) that some readable file of the address
    index marks taken; files that fail their checksum count for nothing."""
    directory = os.path.join(registry_path, INDEX_DIRECTORY)
    taken = set()
    for file_name in os.listdir(directory) if os.path.isdir(directory) else []:
        with open(os.path.join(directory, file_name), "rb") as file:
            data = file.read()
        if len(data) < INDEX_HEADER.size + 4 or zlib.crc32(data[:-4]) != CRC.unpack(data[-4:])[0]:
            continue
        magic, _version, _zero, slots, _pending, *_stamp = INDEX_HEADER.unpack_from(data)
        assert magic == b"MSIX", (file_name, magic)
        bitmap = int.from_bytes(data[INDEX_HEADER.size:INDEX_HEADER.size + slots // 8], "little")
        taken |= {slot for slot in range(slots) if bitmap >> slot & 1}
    return taken


def index_holds_nothing(registry_path):
    """True when the address index marks nothing: every file in ``.index`` is a whole
    index file (magic, checksum) with no GiB taken and no range pending, as the last
    unlink of a registry leaves it."""
    directory = os.path.join(registry_path, INDEX_DIRECTORY)
    for file_name in os.listdir(directory):
        with open(os.path.join(directory, file_name), "rb") as file:
            data = file.read()
        if len(data) < INDEX_HEADER.size + 4 or zlib.crc32(data[:-4]) != CRC.unpack(data[-4:])[0]:
            return False
        magic, _version, _zero, slots, pending, *_stamp = INDEX_HEADER.unpack_from(data)
        bitmap = data[INDEX_HEADER.size:INDEX_HEADER.size + slots // 8]
        if magic != b"MSIX" or pending or any(bitmap):
            return False
    return True


def registry_files(registry_path):
    """The registry's contents, sorted, apart from what it keeps for itself: its info
    file, and an address index that marks nothing (the last unlink leaves it so); and the
    lock file an older mshare kept."""
    if not os.path.isdir(registry_path):
        return []
    files = set(os.listdir(registry_path)) - {".lock", "mshare_info"}
    if INDEX_DIRECTORY in files and index_holds_nothing(registry_path):
        files.remove(INDEX_DIRECTORY)
    return sorted(files)


def assert_index_covers_ranges(registry_path):
    """Every range file's GiBs are marked in the index: what lets create trust it."""
    arena_start = arena()[0]
    taken = indexed_gibs(registry_path)
    for file_name, (start, end, _location) in range_files(registry_path).items():
        gibs = set(range((start - arena_start) // GiB, (end - arena_start + GiB - 1) // GiB))
        assert gibs <= taken, f"{file_name} is not covered by the address index"


def visible_regions(registry_path):
    """Every entry, each checked complete: well-formed, its data object present, owned
    like its entry and large enough, its address range recorded for it and overlapping
    no other region's. Returns ``{name: DocumentedEntry}``."""
    regions = {name: read_documented_entry(registry_path, name) for name in region_names(registry_path)}
    claims = {(start, end): location for start, end, location in range_files(registry_path).values()}
    for name, entry in regions.items():
        entry_stat = os.stat(os.path.join(registry_path, name))
        data_stat = os.stat(entry.data_path, follow_symlinks=False)
        assert (data_stat.st_uid, data_stat.st_gid, stat.S_IMODE(data_stat.st_mode)) == (
            entry_stat.st_uid, entry_stat.st_gid, stat.S_IMODE(entry_stat.st_mode)), name
        assert data_stat.st_size >= entry.map_length, name
        assert claims.get((entry.addr, entry.range_file_end)) == entry.location, (name, claims)
    spans = sorted((entry.addr, entry.range_file_end, name) for name, entry in regions.items())
    for (_, end, name), (start, _, following) in zip(spans, spans[1:]):
        assert end <= start, f"regions {name} and {following} overlap"
    return regions


def data_objects(registry_id):
    """Paths of the data objects of the registry with this id, on every backend."""
    return {os.path.join(SHM, f) for f in shm_objects_of(registry_id)} | set(huge_page_objects_of(registry_id))


def assert_clean(registry_path, *, still_mapped=0):
    """Nothing but complete regions: no orphaned data object, no temporary file, and no
    range file beyond the regions' own and ``still_mapped`` unlinked-but-mapped ones."""
    regions = visible_regions(registry_path)
    with Registry(registry_path) as registry:  # only for the id the data objects carry
        registry_id = registry.registry_id
    assert data_objects(registry_id) == {entry.data_path for entry in regions.values()}
    files = set(os.listdir(registry_path)) - OWN_FILES - set(regions)
    assert not [f for f in files if f.startswith(TEMP_PREFIX)], files
    own_ranges = {f for f, (start, end, _) in range_files(registry_path).items()
                  if any((entry.addr, entry.range_file_end) == (start, end) for entry in regions.values())}
    extra = {f for f in files if f.startswith(RANGE_PREFIX)} - own_ranges
    assert len(extra) == still_mapped, extra
    assert files <= own_ranges | extra | {INDEX_DIRECTORY}, files
    assert_index_covers_ranges(registry_path)
    return regions
