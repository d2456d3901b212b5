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

    def __init__(self, message, name=None):
        super().__init__(errno.EEXIST, message, name)


class CorruptEntryError(MshareError):
    """A registry entry is truncated, of an unknown version, inconsistent, or not a file."""

    def __init__(self, message, name=None):
        super().__init__(errno.EBADMSG, message, name)


class UnsafeRegistryError(MshareError):
    """The registry directory could let another user tamper with regions."""

    def __init__(self, message, path=None):
        super().__init__(errno.EPERM, message, path)


class HugePagesUnavailableError(MshareError):
    """A demanded huge-page backend cannot hold the region: nothing is mounted where it
    needs a mount (``ENODEV``), the hugetlb pool is short (``ENOMEM``) or the huge-page
    tmpfs is full (``ENOSPC``). The message names what is missing and the fixing command."""


class HugePagesFallbackWarning(RuntimeWarning):
    """``hugepages="auto"`` found huge pages set up but unable to hold a region, and used
    the next backend instead."""
