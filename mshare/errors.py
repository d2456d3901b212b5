"""mshare's own exceptions.

Failed system calls surface as the built-in ``OSError`` family (``FileExistsError``,
``FileNotFoundError``, ``PermissionError``, ...) so ordinary ``except`` clauses work.
The classes here cover what has no errno of its own; all derive from ``MshareError``,
itself an ``OSError``.
"""

import errno


class MshareError(OSError):
    """Base of mshare's own errors."""


class AddressConflictError(MshareError):
    """The region's fixed address is already taken in this process (or the arena is full)."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(errno.EEXIST, message, name)


class CorruptEntryError(MshareError):
    """A registry entry is truncated, of an unknown version, inconsistent, or not a file."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(errno.EBADMSG, message, name)


class UnsafeRegistryError(MshareError):
    """The registry directory could let another user tamper with regions."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(errno.EPERM, message, path)


class HugePagesUnavailableError(MshareError):
    """A demanded huge-page backend cannot hold the region: nothing is mounted where it
    needs a mount (``ENODEV``), the hugetlb pool is short (``ENOMEM``) or the huge-page
    tmpfs is full (``ENOSPC``). The message names what is missing and the fixing command."""


class HugePagesFallbackWarning(RuntimeWarning):
    """``hugepages="auto"`` found huge pages set up but unable to hold a region, and used
    the next backend instead."""

class OwnerDiedError(MshareError):
    """The previous holder of a region's lock died while holding it.

    The lock has been made consistent again and is *not* held by the caller: whatever it
    protected may be half-updated. Repair or re-check that data, then take the lock again.
    """

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(errno.EOWNERDEAD, message, name)


class RegionFullError(MshareError, MemoryError):
    """The region's allocator has no free block large enough, or its name table is full."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(errno.ENOMEM, message, name)


class CorruptBookkeepingError(MshareError):
    """A region's lock, allocator or name table is damaged or of an unknown format.

    Raised instead of following a bad pointer, e.g. when a program overwrote the
    allocator's block headers by writing past the end of an allocation.
    """

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(errno.EBADMSG, message, name)
