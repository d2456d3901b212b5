"""The interface every backend implements."""

import errno
import os
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Final, List, Optional, Tuple

from mshare._core import Mapping

from mshare.owned import Descriptor, create_file, open_descriptor, signals_allowed

# Anyone may plant files where data objects live: never follow a symbolic link and never
# block (``O_NONBLOCK``, so a FIFO cannot hang the caller).
OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Reservations from this size on may take long enough (tens of milliseconds and up) that
# Ctrl-C, held back for the rest of a create, is let through while they run.
INTERRUPTIBLE_RESERVATION: Final = 64 << 20


class Backend:
    """A kind of data object regions can live in.

    Subclasses set ``name`` and implement the methods that raise here.
    """

    name = ""

    def page_size(self) -> int:
        """The page size mappings of this backend are expected to use."""
        raise NotImplementedError

    def location_for(self, registry_id: str, region_id: str) -> str:
        """Where the data object of a region lives."""
        raise NotImplementedError

    def owns_location(self, location: str, registry_id: str) -> bool:
        """True when ``location`` is one this backend would make for ``registry_id``.

        Entries are checked with this before anything is opened, so a tampered entry
        cannot point a region at someone else's file.
        """
        raise NotImplementedError

    def location_problem(self, location: str, registry_id: str) -> Optional[str]:
        """Why ``location`` is not one this backend would make for ``registry_id`` (a phrase
        read after "points at LOCATION, "), or ``None`` when it is one."""
        if self.owns_location(location, registry_id):
            return None
        return "which is not a data object of this registry"

    def locations(self, registry_id: str) -> List[str]:
        """Every data object of the registry ``registry_id`` that exists now, as
        locations (``mshare gc`` looks for orphans among them).

        Works for backends whose location ends in the data object's file name, as
        every backend here does; override otherwise.
        """
        sample = self.location_for(registry_id, "0" * 16)
        directory = os.path.dirname(self.path(sample))
        try:
            file_names = os.listdir(directory)
        except FileNotFoundError:
            return []
        found = (os.path.join(os.path.dirname(sample), file_name) for file_name in file_names)
        return sorted(location for location in found if self.owns_location(location, registry_id))

    def path(self, location: str) -> str:
        """The file-system path of a location (for ``stat`` and messages)."""
        raise NotImplementedError

    def create(self, location: str, length: int, mode: int,
               undo: ExitStack) -> Tuple[Descriptor, os.stat_result]:
        """Create the data object exclusively, ``length`` bytes long and reserved (or left
        for ``map_new`` to reserve, where a mapping does), apply ``mode`` exactly; return a
        read-write ``Descriptor`` and its ``fstat`` as created (device and inode, not size).
        Its removal is pushed on the ``Undo`` stack ``undo`` the instant it exists, so
        nothing is left on failure."""
        data = create_file(undo, self.path(location), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC,
                           0o600, lambda: self.unlink(location))
        try:
            info = os.fstat(data.fd)
            self.check_file_system(info.st_dev, location)
            # The mode is the region's, exactly: open(2) would have applied the umask.
            os.fchmod(data.fd, mode)
            os.ftruncate(data.fd, length)
            # create holds Ctrl-C back; a large reservation may take seconds.
            interruptible: AbstractContextManager[None] = (
                signals_allowed() if length >= INTERRUPTIBLE_RESERVATION else nullcontext())
            with interruptible:
                self.reserve(data.fd, length, self.path(location))
        except BaseException:
            data.close()
            raise
        return data, info

    def reserve(self, fd: int, length: int, path: str) -> None:
        """Allocate every byte now, so a short pool or a full file system fails here and
        never as a ``SIGBUS`` on first touch."""
        raise NotImplementedError

    def map_new(self, data: Descriptor, start: int, length: int, label: str) -> Mapping:
        """Map a data object ``create`` just made, read-write, at ``start``."""
        return Mapping.map_fixed(data.fd, start, length, True, label)

    def open(self, location: str, writable: bool) -> Tuple[Descriptor, os.stat_result]:
        """Open an existing data object as a ``Descriptor``, with its ``fstat``; the
        kernel checks its owner and mode."""
        flags = (os.O_RDWR if writable else os.O_RDONLY) | OPEN_FLAGS
        data = open_descriptor(self.path(location), flags)
        try:
            info = os.fstat(data.fd)
            self.check_file_system(info.st_dev, location)
        except BaseException:
            data.close()
            raise
        return data, info

    def check_file_system(self, device: int, location: str) -> None:
        """Refuse a data object on the device ``device`` when that is not this backend's
        kind of file system (every file a shm location can name is in ``/dev/shm``)."""

    def unlink(self, location: str) -> None:
        """Remove the data object's name; mappings stay valid."""
        raise NotImplementedError

    def after_map(self, mapping: Mapping) -> None:
        """Advise the kernel about a fresh mapping (e.g. transparent huge pages)."""

    def exists(self, location: str) -> bool:
        try:
            os.stat(self.path(location), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True


def no_space(location: str, length: int, free: int, fix: str) -> OSError:
    """The ``ENOSPC`` error of a file system too full for a region."""
    return OSError(
        errno.ENOSPC,
        f"not enough space in {os.path.dirname(location)} for {length} bytes ({free} bytes "
        f"free); {fix}",
        location,
    )
