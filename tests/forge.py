"""Crafting hostile registry contents, the way another local user could.

Everything is made as root and then handed to the pretended author with ``chown``,
which gives exactly the files that user could have made (the registry and ``/dev/shm``
are world-writable). ``Forger.remove_all`` takes everything away again.
"""

import os
import socket
import struct
import zlib

import mshare
from mshare import addresses
from mshare.backends.shm import SHM_DIRECTORY
from mshare.entry import Entry
from mshare.registry import Registry, range_file_name

# Offsets of fields in the entry's fixed part (see mshare/entry.py).
MAGIC_AT, VERSION_AT, FIXED_LENGTH_AT, ADDR_AT, CREATED_AT = 0, 4, 6, 16, 64
FIXED_SIZE = 108


def with_crc(body):
    """``body`` (an entry without its checksum) followed by a correct CRC-32."""
    return body + struct.pack("<I", zlib.crc32(body))


def recrc(data):
    """Entry bytes whose checksum is recomputed, so only the fields can be wrong."""
    return with_crc(data[:-4]) if len(data) >= 4 else data


def patched(data, offset, fmt, value):
    """Entry bytes with one field overwritten (checksum recomputed)."""
    changed = bytearray(data)
    struct.pack_into(fmt, changed, offset, value)
    return recrc(bytes(changed))


class Forger:
    """Plants files in one registry and in ``/dev/shm`` on behalf of ``uid:gid``."""

    def __init__(self, registry_path, uid, gid):
        self.registry_path = registry_path
        self.uid, self.gid = uid, gid
        with Registry(registry_path) as registry:
            self.registry_id = registry.registry_id
        self.made = []

    def location(self, region_id):
        return f"/mshare-{self.registry_id}-{region_id}"

    def entry(self, region_id, addr, length=4096, **fields):
        """A well-formed entry for a region of ``length`` bytes at ``addr``."""
        values = dict(
            addr=addr, size=length, data_length=length, map_length=length,
            reserved_length=addresses.round_up(length, addresses.ALIGNMENT), page_size=4096,
            backend="shm", region_id=region_id, location=self.location(region_id),
            creator_pid=4242, created=1.7e9,
        )
        values.update(fields)
        return Entry(**values)

    def _own(self, path, mode):
        os.chown(path, self.uid, self.gid, follow_symlinks=False)
        if not os.path.islink(path):
            os.chmod(path, mode)
        self.made.append(path)
        return path

    def file(self, path, content=b"", mode=0o644):
        with open(path, "xb") as output:
            output.write(content)
        return self._own(path, mode)

    def plant_entry(self, name, content, mode=0o644):
        data = content.pack() if isinstance(content, Entry) else content
        return self.file(os.path.join(self.registry_path, name), data, mode)

    def plant_range(self, start, end, location, mode=0o444):
        content = f"shm {location}\n".encode()
        return self.file(os.path.join(self.registry_path, range_file_name(start, end)), content, mode)

    def plant_data(self, region_id, length=4096, mode=0o644):
        path = SHM_DIRECTORY + self.location(region_id)
        self.file(path, b"", mode)
        os.truncate(path, length)
        return path

    def symlink(self, target, path):
        os.symlink(target, path)
        return self._own(path, 0)

    def fifo(self, path, mode=0o644):
        os.mkfifo(path)
        return self._own(path, mode)

    def directory(self, path, mode=0o755):
        os.mkdir(path)
        return self._own(path, mode)

    def socket(self, path):
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.close()
        return self._own(path, 0o644)

    def region(self, name, region_id, addr, length=4096, mode=0o644, **fields):
        """A complete region of the forger's own: entry, range file and data object."""
        entry = self.entry(region_id, addr, length, **fields)
        self.plant_data(region_id, length, mode)
        self.plant_range(entry.addr, entry.end, entry.location)
        self.plant_entry(name, entry, mode)
        return entry

    def remove_all(self):
        for path in reversed(self.made):
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    os.rmdir(path)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass
        self.made.clear()
        # Planted and removed behind the registry's back: the address index, rebuilt
        # with the planted ranges, is stale now; the next change (here gc) makes it anew.
        mshare.gc()
