"""What the huge-page backends share: a region's data object is a plain file named
``mshare-REGISTRY-REGION`` directly on a mounted file system of one kind.

The location recorded in the entry is the file's absolute path. It is trusted only while
it has that exact shape for this registry *and* its directory is, right now, a mount of
the backend's file system (from ``/proc/self/mountinfo``, never from the environment, so
an attacher whose environment differs checks the same thing). Opening checks once more,
on the open descriptor, that the file lives on such a file system: a tampered entry can
lead at most to another data object of this registry on such a file system, never to an
arbitrary file.
"""

import os
import re
from typing import List, NamedTuple, Optional

from mshare import machine
from mshare.backends.base import Backend
from mshare.errors import CorruptEntryError

PREFIX = "mshare-"


class Unavailable(NamedTuple):
    """Why a backend cannot hold a region, the root command that would fix it (or
    ``""``), and whether anyone set the backend up for such use.

    ``configured`` is true when an administrator clearly meant huge pages to be used (a
    pool with pages, a writable mount, an override variable): ``auto`` then says why it
    falls back instead of falling back silently.
    """

    errno: int
    reason: str
    fix: str
    configured: bool

    @property
    def message(self) -> str:
        return f"{self.reason}; as root: {self.fix}" if self.fix else self.reason


class FileBackend(Backend):
    """A backend whose data objects are files on mounts of ``fstype``.

    The registered instance (no ``directory``) opens, checks and removes existing data
    objects; ``plan`` functions return instances bound to one mount and its page size,
    which also place new ones.
    """

    fstype = ""

    def __init__(self, directory: Optional[str] = None, page_size: Optional[int] = None) -> None:
        self.directory = directory
        self._page_size = page_size

    def location_for(self, registry_id: str, region_id: str) -> str:
        if self.directory is None:
            raise ValueError(f"the {self.name} backend needs a mount to place a region")
        return os.path.join(self.directory, f"{PREFIX}{registry_id}-{region_id}")

    def owns_location(self, location: str, registry_id: str) -> bool:
        return self.location_problem(location, registry_id) is None

    def location_problem(self, location: str, registry_id: str) -> Optional[str]:
        """Why ``location`` is not a data object this backend makes for ``registry_id``."""
        match = re.fullmatch(rf"(/.+)/{PREFIX}{re.escape(registry_id)}-[0-9a-f]{{16}}", location)
        if match is None:
            return "which is not a data object of this registry"
        directory = match.group(1)
        if os.path.normpath(directory) != directory:
            return "which is not a normalized path"
        mount = machine.mount_at(directory)
        if mount is None or not self.suits(mount):
            return (f"but {directory} is not a {self.fstype} mount now (unmounted? the data "
                    "went with it)")
        return None

    def suits(self, mount: machine.Mount) -> bool:
        """True when ``mount`` is the kind of file system this backend's data lives on."""
        return mount.fstype == self.fstype

    def locations(self, registry_id: str) -> List[str]:
        # Data objects may be on any mount of the kind (MSHARE_* overrides differ between
        # processes), so every one is searched.
        found: List[str] = []
        for mount in machine.visible_mounts(self.fstype):
            if not self.suits(mount):
                continue
            try:
                names = os.listdir(mount.mount_point)
            except OSError:
                continue
            found += [os.path.join(mount.mount_point, name) for name in names]
        return sorted(location for location in found if self.owns_location(location, registry_id))

    def path(self, location: str) -> str:
        return location

    def unlink(self, location: str) -> None:
        # Only ever a file directly on a mount of our kind: a damaged entry must not make
        # anyone remove files elsewhere.
        mount = machine.mount_at(os.path.dirname(location))
        if mount is None or not self.suits(mount):
            return
        try:
            os.unlink(location)
        except FileNotFoundError:
            pass

    def check_file_system(self, device: int, location: str) -> None:
        mount = machine.mount_of_device(device)
        if mount is None or not self.suits(mount):
            raise CorruptEntryError(
                f"{location} is not on a {self.fstype} file system; refusing to use it"
            )
