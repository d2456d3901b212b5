"""What ``info()`` and ``list()`` tell about a region: ``RegionInfo`` for an entry the
caller can read, ``UnreadableRegion`` for one it may not read or that is damaged."""

import os
import stat
from dataclasses import dataclass
from typing import TypeAlias, Union

from mshare.entry import Entry


@dataclass(frozen=True)
class RegionInfo:
    """A region as its registry entry describes it, with the entry's owner and mode."""

    name: str
    addr: int
    size: int
    mode: int
    uid: int
    gid: int
    page_size: int
    backend: str
    creator_pid: int
    created: float
    attached: int
    status: str = "ok"

    @classmethod
    def from_entry(cls, name: str, entry: Entry, entry_stat: os.stat_result, attached: int) -> "RegionInfo":
        """The region ``name`` as ``entry`` describes it, owned and moded as ``entry_stat``."""
        return cls(
            name=name, addr=entry.addr, size=entry.size,
            mode=stat.S_IMODE(entry_stat.st_mode), uid=entry_stat.st_uid, gid=entry_stat.st_gid,
            page_size=entry.page_size, backend=entry.backend, creator_pid=entry.creator_pid,
            created=entry.created, attached=attached,
        )


@dataclass(frozen=True)
class UnreadableRegion:
    """A region ``list()`` found but could not read: only what ``stat`` tells.

    ``status`` says why: ``"no access"`` when the caller may not read the entry, or
    ``"corrupt: ..."`` when the entry is damaged."""

    name: str
    mode: int
    uid: int
    gid: int
    status: str

    @classmethod
    def from_stat(cls, name: str, entry_stat: os.stat_result, status: str) -> "UnreadableRegion":
        return cls(name=name, mode=stat.S_IMODE(entry_stat.st_mode), uid=entry_stat.st_uid,
                   gid=entry_stat.st_gid, status=status)


# What ``list()`` returns for each entry; tell the two apart with ``isinstance``.
ListedRegion: TypeAlias = Union[RegionInfo, UnreadableRegion]
