"""``RegionInfo``: what ``info()`` and ``list()`` tell about a region."""

import stat
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class RegionInfo:
    """A region as the registry describes it.

    Fields that come from the entry's contents are ``None`` when the caller may not read
    the entry (``status == "no access"``) or the entry is damaged (``status`` starts
    with ``"corrupt"``); ``name``, ``mode``, ``uid`` and ``gid`` always come from ``stat``.
    """

    name: str
    addr: Optional[int]
    size: Optional[int]
    mode: int
    uid: int
    gid: int
    page_size: Optional[int]
    backend: Optional[str]
    creator_pid: Optional[int]
    created: Optional[float]
    attached: Optional[int] = None
    status: str = "ok"

    @classmethod
    def from_entry(cls, name, entry, entry_stat, attached):
        return cls(
            name=name, addr=entry.addr, size=entry.size,
            mode=stat.S_IMODE(entry_stat.st_mode), uid=entry_stat.st_uid, gid=entry_stat.st_gid,
            page_size=entry.page_size, backend=entry.backend, creator_pid=entry.creator_pid,
            created=entry.created, attached=attached,
        )

    @classmethod
    def from_stat(cls, name, entry_stat, status):
        return cls(
            name=name, addr=None, size=None, mode=stat.S_IMODE(entry_stat.st_mode),
            uid=entry_stat.st_uid, gid=entry_stat.st_gid, page_size=None, backend=None,
            creator_pid=None, created=None, attached=None, status=status,
        )
