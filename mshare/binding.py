"""What ties a registry entry to its data object and to its address range.

Anyone may create files in the registry and in ``/dev/shm``, and whoever may write a
region may also rewrite its entry (the entry's mode is the region's). So the data
object behind an entry is only mapped, or removed, when it demonstrably belongs to the
entry: a regular file with the entry's owner, group and mode. A forged or rewritten
entry can then only lead to a data object that exactly the same users could already
open with exactly the same rights, never to somebody else's region; and removing a
planted entry (as root, say) never removes a victim's data or address range.
"""

import errno
import os
import stat
from typing import Tuple

from mshare import faults
from mshare._core import open_file, open_matching_file
from mshare.attach_plan import Plan
from mshare.backends import get_backend
from mshare.backends.base import OPEN_FLAGS
from mshare.entry import Entry
from mshare.errors import CorruptEntryError
from mshare.owned import Descriptor
from mshare.registry import RANGE_KEPT, RangeClaim, Registry, range_file_name


def foreign(entry_stat: os.stat_result, data_stat: os.stat_result) -> str | None:
    """Why ``data_stat`` is not the data object of the entry ``entry_stat`` describes,
    or ``None`` when owner, group and mode all match."""
    if not stat.S_ISREG(data_stat.st_mode):
        return "its data object is not a regular file"
    if data_stat.st_uid != entry_stat.st_uid:
        return f"entry owned by uid {entry_stat.st_uid} but its data by uid {data_stat.st_uid}"
    if data_stat.st_gid != entry_stat.st_gid:
        return f"entry belongs to gid {entry_stat.st_gid} but its data to gid {data_stat.st_gid}"
    entry_mode, data_mode = stat.S_IMODE(entry_stat.st_mode), stat.S_IMODE(data_stat.st_mode)
    if entry_mode != data_mode:
        return (f"entry mode {entry_mode:04o} differs from its data's {data_mode:04o} "
                "(a chmod must be applied to both)")
    return None


def open_data(name: str, plan: Plan, entry_stat: os.stat_result,
              writable: bool) -> Tuple[Descriptor, int, int]:
    """Open the data object of the entry ``plan`` was made from once it is shown to
    belong to the entry and to hold every byte the entry maps; returns its ``Descriptor``,
    device and inode. The kernel checks permission on the open itself."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | OPEN_FLAGS
    # The usual case in one compiled call; anything else is opened again the long way,
    # which says what is wrong.
    opened = open_matching_file(plan.data_path, flags, entry_stat.st_mode, entry_stat.st_uid,
                                entry_stat.st_gid, plan.entry.map_length)
    if opened is None:
        data, data_stat = _open_data_explained(name, plan, entry_stat, flags)
        return data, data_stat.st_dev, data_stat.st_ino
    owner, device, inode = opened
    data = Descriptor.owning(owner)
    if plan.mounted:
        try:
            plan.check_device(device)
        except BaseException:
            data.close()
            raise
    return data, device, inode


def _open_data_explained(name: str, plan: Plan, entry_stat: os.stat_result,
                         flags: int) -> Tuple[Descriptor, os.stat_result]:
    """``open_data`` with every check in Python, each refusal explained."""
    path = plan.data_path
    try:
        owner, data_stat = open_file(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT,
            f"the data of region {name!r} ({path}) is gone; the entry is stale (run: mshare gc)",
            name,
        ) from None
    except PermissionError:
        # A redirected entry is named as such rather than reported as the permission
        # error the kernel gives; looked at only now, so a permitted open costs no stat.
        try:
            _refuse_foreign(name, entry_stat, os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            pass
        raise
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise CorruptEntryError(
                f"region {name!r}: its data object {path} is not a regular file", name
            ) from None
        raise
    data = Descriptor.owning(owner)
    try:
        if plan.mounted:
            plan.check_device(data_stat.st_dev)
        # The entry is a regular file: the same st_mode means a regular file of its mode.
        if ((data_stat.st_mode, data_stat.st_uid, data_stat.st_gid)
                != (entry_stat.st_mode, entry_stat.st_uid, entry_stat.st_gid)):
            _refuse_foreign(name, entry_stat, data_stat)
        if data_stat.st_size < plan.entry.map_length:
            raise CorruptEntryError(
                f"region {name!r}: data object holds {data_stat.st_size} bytes, the entry "
                f"says {plan.entry.map_length}; refusing to map it", name)
    except BaseException:
        data.close()
        raise
    return data, data_stat


def _refuse_foreign(name: str, entry_stat: os.stat_result, data_stat: os.stat_result) -> None:
    problem = foreign(entry_stat, data_stat)
    if problem is not None:
        raise CorruptEntryError(f"region {name!r}: {problem}; refusing to map it", name)


def remove_data(registry: Registry, entry: Entry, entry_stat: os.stat_result) -> None:
    """After an entry is unlinked, remove its data object and release its address range,
    each only if it belongs to the entry; anything else stays for its owner (or gc)."""
    backend = get_backend(entry.backend)
    try:
        data_stat = os.stat(backend.path(entry.location), follow_symlinks=False)
    except FileNotFoundError:
        data_stat = None
    if data_stat is not None:
        if foreign(entry_stat, data_stat) is not None:
            return
        backend.unlink(entry.location)
        faults.point("unlink:data-removed")
    claim = RangeClaim(entry.addr, entry.end, range_file_name(entry.addr, entry.end),
                       entry.backend, entry.location)
    if registry.release_range(claim, entry_stat.st_uid) == RANGE_KEPT:
        registry.keep_pending(claim, entry_stat.st_uid)
