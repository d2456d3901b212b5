"""The registry entry format: what msharefs's ``struct mshare_info`` holds, and more.

An entry is a small binary file, little-endian, named exactly as its region:

====== ===== ===================================================================
offset bytes field
====== ===== ===================================================================
0      4     magic ``b"MSHR"``
4      2     format version (1)
6      2     length of the fixed part (108)
8      4     creator pid
12     4     flags (0; reserved)
16     8     start address
24     8     size: exactly the bytes asked for
32     8     data length: size rounded up to the page size; bookkeeping starts here
40     8     map length: bytes mapped (data length + bookkeeping)
48     8     reserved length: address space set aside (map length rounded to the alignment)
56     8     page size the backend maps with
64     8     creation time, epoch seconds (IEEE double)
72     16    backend name, ASCII, NUL-padded (``shm``, ``hugetlb``, ``thp``)
88     16    region id, 16 lowercase hex digits, unique per region
104    2     location length L
106    2     0 (padding)
108    L     location of the data object, UTF-8 (backend-specific)
108+L  4     CRC-32 of every byte before it
====== ===== ===================================================================

Every field is checked before anything is mapped; a bad entry raises
``CorruptEntryError`` naming the field.
"""

import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Tuple

from mshare.errors import CorruptEntryError

MAGIC = b"MSHR"
VERSION = 1
_FIXED = struct.Struct("<4sHHIIQQQQQQd16s16sHH")
_CRC = struct.Struct("<I")
MAX_LOCATION_BYTES = 4096
MAX_ENTRY_BYTES = _FIXED.size + MAX_LOCATION_BYTES + _CRC.size
_REGION_ID = re.compile(r"[0-9a-f]{16}\Z")
# Creation times are shown as dates; a forged one must not overflow the conversion.
_LATEST_CREATION = 32503680000.0


@dataclass(frozen=True)
class Entry:
    addr: int
    size: int
    data_length: int
    map_length: int
    reserved_length: int
    page_size: int
    backend: str
    region_id: str
    location: str
    creator_pid: int
    created: float

    @property
    def end(self) -> int:
        """End of the address range reserved for the region."""
        return self.addr + self.reserved_length

    def pack(self) -> bytes:
        location = self.location.encode("utf-8")
        fixed = _FIXED.pack(
            MAGIC, VERSION, _FIXED.size, self.creator_pid, 0, self.addr, self.size,
            self.data_length, self.map_length, self.reserved_length, self.page_size,
            self.created, self.backend.encode("ascii"), self.region_id.encode("ascii"),
            len(location), 0,
        )
        body = fixed + location
        return body + _CRC.pack(zlib.crc32(body))


def parse(data: bytes, *, alignment: int, arena: Tuple[int, int]) -> Entry:
    """Decode and validate entry bytes; ``CorruptEntryError`` says what is wrong."""
    if len(data) < _FIXED.size + _CRC.size:
        raise CorruptEntryError(f"entry is truncated ({len(data)} bytes)")
    (magic, version, fixed_size, creator_pid, _flags, addr, size, data_length, map_length,
     reserved_length, page_size, created, backend, region_id, location_length,
     _padding) = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise CorruptEntryError(f"not an mshare entry (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise CorruptEntryError(
            f"entry format version {version} is not supported (this mshare reads {VERSION})"
        )
    if fixed_size != _FIXED.size:
        raise CorruptEntryError(f"entry header length {fixed_size} is wrong")
    if len(data) != _FIXED.size + location_length + _CRC.size:
        raise CorruptEntryError(
            f"entry is {len(data)} bytes, expected {_FIXED.size + location_length + _CRC.size}"
        )
    body_length = _FIXED.size + location_length
    (crc,) = _CRC.unpack_from(data, body_length)
    if crc != zlib.crc32(data[:body_length]):
        raise CorruptEntryError("entry checksum does not match its contents")
    try:
        entry = Entry(
            addr=addr, size=size, data_length=data_length, map_length=map_length,
            reserved_length=reserved_length, page_size=page_size,
            backend=backend.rstrip(b"\0").decode("ascii"),
            region_id=region_id.decode("ascii"),
            location=data[_FIXED.size:body_length].decode("utf-8"),
            creator_pid=creator_pid, created=created,
        )
    except UnicodeDecodeError as error:
        raise CorruptEntryError(f"entry has undecodable text: {error}") from None
    _check_geometry(entry, alignment, arena)
    return entry


def _check_geometry(entry: Entry, alignment: int, arena: Tuple[int, int]) -> None:
    page = entry.page_size
    if page < 4096 or page & (page - 1):
        raise CorruptEntryError(f"entry page size {page} is not a power of two >= 4096")
    if not _REGION_ID.match(entry.region_id):
        raise CorruptEntryError(f"entry region id {entry.region_id!r} is malformed")
    if entry.size <= 0 or entry.data_length < entry.size or entry.data_length % page:
        raise CorruptEntryError(
            f"entry size {entry.size} / data length {entry.data_length} are inconsistent"
        )
    if entry.map_length < entry.data_length or entry.map_length % page:
        raise CorruptEntryError(f"entry map length {entry.map_length} is inconsistent")
    if entry.reserved_length < entry.map_length or entry.reserved_length % alignment:
        raise CorruptEntryError(f"entry reserved length {entry.reserved_length} is inconsistent")
    if entry.addr % alignment:
        raise CorruptEntryError(
            f"entry address {entry.addr:#x} is not aligned to {alignment:#x}"
        )
    arena_start, arena_end = arena
    if not (arena_start <= entry.addr and entry.end <= arena_end):
        raise CorruptEntryError(
            f"entry range {entry.addr:#x}-{entry.end:#x} lies outside the arena "
            f"{arena_start:#x}-{arena_end:#x}"
        )
    if not entry.location or "\0" in entry.location:
        raise CorruptEntryError("entry has no valid data location")
    if not (math.isfinite(entry.created) and 0 <= entry.created < _LATEST_CREATION):
        raise CorruptEntryError(f"entry creation time {entry.created!r} is not a plausible date")
