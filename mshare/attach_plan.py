"""What an attach works out from an entry, worked out once per entry and process.

An entry is never rewritten in place (a change links a new file), and the parsed
``Entry``, its backend, its data object's path, its range file's name and, for a backend
whose locations involve no mount, the location's validity are a pure function of the
entry's bytes and of the registry directory they were read from. So a ``Plan`` is kept by
exactly those; changed bytes are a new key. A location on a mount, and the file system a
data object opened there lives on, are checked again whenever the mount table has
changed since (mounts come and go): a check is kept with the ``machine.mount_view`` it
was made in. Everything the kernel says about files is checked at every attach.
"""

import os
from typing import Dict, Optional, Tuple

from mshare import machine
from mshare._core import open_registry_entry
from mshare.backends import Backend, get_backend
from mshare.backends.files import FileBackend
from mshare.entry import MAX_ENTRY_BYTES, Entry
from mshare.owned import Descriptor
from mshare.registry import Registry, range_file_name, registry_root

_ENTRY_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Emptied when full rather than tracked for age, as the registry's parse cache is.
_KEPT = 256


class Plan:
    """What attaching one entry needs besides the files themselves."""

    __slots__ = ("entry", "backend", "data_path", "range_file", "mounted", "location_checked",
                 "device_checked")
    entry: Entry
    backend: Backend
    data_path: str
    range_file: str
    mounted: bool
    # The mount view the location was last found valid in.
    location_checked: Optional[object]
    # (mount view, device) of the last data object found on a file system of the backend.
    device_checked: Optional[Tuple[object, int]]

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.backend = get_backend(entry.backend)
        self.data_path = self.backend.path(entry.location)
        self.range_file = range_file_name(entry.addr, entry.end)
        # Whether the location names a mount, whose checks hold for one mount view only.
        self.mounted = isinstance(self.backend, FileBackend)
        self.location_checked = None
        self.device_checked = None

    def check_device(self, device: int) -> None:
        """Refuse (``CorruptEntryError``) a data object, opened from this plan's mounted
        location, on a device that is not a file system of the backend; once per mount
        view."""
        checked = (machine.mount_view(), device)
        if self.device_checked != checked:
            self.backend.check_file_system(device, self.entry.location)
            self.device_checked = checked


# (entry bytes, registry directory's (device, inode)) -> Plan
_plans: Dict[Tuple[bytes, Tuple[int, int]], Plan] = {}
# A registry path as given (absolute) -> os.path.abspath of it.
_absolute: Dict[str, str] = {}


def plan_for(registry: Registry, name: str, data: bytes) -> Plan:
    """The ``Plan`` of the entry ``name`` whose bytes are ``data``, its location checked
    now if that involves a mount; ``CorruptEntryError`` names what is wrong with bytes
    that do not parse or point elsewhere."""
    key = (data, registry.identity)
    plan = _plans.get(key)
    if plan is None or (plan.mounted and plan.location_checked is not machine.mount_view()):
        entry = registry.parse_entry(name, data)
        if plan is None:
            plan = Plan(entry)
            if len(_plans) >= _KEPT:
                _plans.clear()
            _plans[key] = plan
        if plan.mounted:
            plan.location_checked = machine.mount_view()
    return plan


def ready_plan(registry: Registry, data: bytes) -> Optional[Plan]:
    """The ``Plan`` of the entry whose bytes are ``data`` when it is known already and its
    location involves no mount: nothing about it is left to check, and no mount view is
    needed (``plan_for``, in one, answers for the others)."""
    plan = _plans.get((data, registry.identity))
    return None if plan is None or plan.mounted else plan


def open_entry(root: Optional[str], name: str,
               writable: bool) -> Optional[Tuple[Registry, bytes, os.stat_result]]:
    """The registry part of an attach in one compiled call: the registry (open, and known
    to this process), the entry's bytes and its ``fstat``; the kernel checks read (and
    write) permission on the entry as ``open(2)`` does. ``None`` (nothing held) when any
    step fails: ``Registry(root)`` and ``read_entry`` then take the road that explains
    every failure."""
    given = root or registry_root()
    path = _absolute.get(given)
    if path is None:
        path = os.path.abspath(given)
        if given.startswith("/") and len(_absolute) < _KEPT:
            _absolute[given] = path
    flags = (os.O_RDWR if writable else os.O_RDONLY) | _ENTRY_FLAGS
    try:
        opened = open_registry_entry(path, name, flags, MAX_ENTRY_BYTES + 1)
    except OSError:
        return None
    if opened is None:
        return None
    directory, identity, data, entry_stat = opened
    owned = Descriptor.owning(directory)
    registry = Registry.known(path, owned, identity)
    if registry is None:
        try:
            Registry(path).close()  # its first opening in this process records it
        except OSError:
            owned.close()
            return None
        registry = Registry.known(path, owned, identity)
    if registry is None or data is None:
        owned.close()
        return None
    return registry, data, entry_stat
