"""The interface every backend implements."""

import errno
import os


class Backend:
    """A kind of data object regions can live in.

    Subclasses set ``name`` and implement the methods that raise here.
    """

    name = ""

    def page_size(self):
        """The page size mappings of this backend are expected to use."""
        raise NotImplementedError

    def location_for(self, registry_id, region_id):
        """Where the data object of a region lives."""
        raise NotImplementedError

    def owns_location(self, location, registry_id):
        """True when ``location`` is one this backend would make for ``registry_id``.

        Entries are checked with this before anything is opened, so a tampered entry
        cannot point a region at someone else's file.
        """
        raise NotImplementedError

    def location_problem(self, location, registry_id):
        """Why ``location`` is not one this backend would make for ``registry_id`` (a phrase
        read after "points at LOCATION, "), or ``None`` when it is one."""
        if self.owns_location(location, registry_id):
            return None
        return "which is not a data object of this registry"

    def locations(self, registry_id):
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

    def path(self, location):
        """The file-system path of a location (for ``stat`` and messages)."""
        raise NotImplementedError

    def create(self, location, length, mode):
        """Create the data object exclusively, reserve ``length`` bytes, apply ``mode``
        exactly; return a read-write file descriptor. Nothing is left on failure."""
        raise NotImplementedError

    def open(self, location, writable):
        """Open an existing data object; the kernel checks its owner and mode.

        Anyone may plant files where data objects live: never follow a symbolic link
        and never block (``O_NOFOLLOW | O_NONBLOCK``, so a FIFO cannot hang the caller).
        """
        raise NotImplementedError

    def unlink(self, location):
        """Remove the data object's name; mappings stay valid."""
        raise NotImplementedError

    def after_map(self, mapping):
        """Advise the kernel about a fresh mapping (e.g. transparent huge pages)."""

    def exists(self, location):
        try:
            os.stat(self.path(location), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True


def no_space(location, length, free, fix):
    """The ``ENOSPC`` error of a file system too full for a region."""
    return OSError(
        errno.ENOSPC,
        f"not enough space in {os.path.dirname(location)} for {length} bytes ({free} bytes "
        f"free); {fix}",
        location,
    )
