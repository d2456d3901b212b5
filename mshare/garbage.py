"""``mshare gc``: sweep what crashed processes left behind, and nothing else.

A process killed in the middle of an operation (``mshare.faults`` names every step)
can leave:

- data objects no entry refers to (create killed before publishing its entry, unlink
  killed between removing the name and removing the data);
- entries whose data object vanished;
- temporary files of an interrupted create;
- address-range files that nobody maps and whose data object is gone, or that a create
  killed before writing them left empty;
- address-index bits of ranges that are gone (the index is rebuilt from the range files).

Never removed: anything a readable entry refers to, anything a process maps (its attach
mark is held), and whatever the caller may not remove (in the sticky registry and
``/dev/shm`` only the owner or root can; others' leftovers are reported as kept). gc
holds the registry lock throughout, so no create or unlink is half-way while it looks.
"""

import errno
import fcntl
import os
import re
import stat
from dataclasses import dataclass, field
from typing import List

from mshare.backends import BACKENDS, get_backend
from mshare.binding import foreign
from mshare.errors import CorruptEntryError
from mshare.owned import open_descriptor
from mshare.registry import TEMP_PREFIX, Registry

# ``.tmp-REGIONID`` is an entry being published (always under the registry lock);
# ``.tmp-FILE-PID-RANDOM`` is a registry file being made by process PID (no lock).
_ENTRY_TEMP = re.compile(r"[0-9a-f]{16}\Z")
_PUBLIC_TEMP = re.compile(r".+-(\d+)-[0-9a-f]{8}\Z")


@dataclass(frozen=True)
class Finding:
    """One leftover: what it is, where, and why it went (or stayed)."""

    kind: str
    path: str
    reason: str


@dataclass
class GcReport:
    """What ``gc`` removed (or, with ``dry_run``, would remove) and what it kept."""

    removed: List[Finding] = field(default_factory=list)
    kept: List[Finding] = field(default_factory=list)


def gc(*, dry_run: bool = False) -> GcReport:
    """Remove what crashed processes left in the registry and its data objects.

    Regions that are complete or attached are never touched. With ``dry_run`` nothing
    is removed and the report says what would be.

    >>> for finding in mshare.gc().removed:
    ...     print(finding.kind, finding.path, finding.reason)
    """
    if not isinstance(dry_run, bool):
        raise TypeError(f"dry_run must be bool, not {type(dry_run).__name__}")
    with Registry() as registry, registry.locked():
        sweep = _Sweep(registry, dry_run)
        sweep.entries()
        sweep.data_objects()
        sweep.temporary_files()
        sweep.ranges()
        if not dry_run:
            # Made anew from the range files that are left, so bits a crash left behind
            # (or ranges planted by hand) are right again; written as the lock goes.
            registry.index.rebuild()
        return sweep.report


class _Sweep:
    def __init__(self, registry, dry_run):
        self.registry = registry
        self.dry_run = dry_run
        self.user = os.geteuid()
        self.report = GcReport()
        self.referenced = set()
        # Owners of entries we cannot read: any of their data objects may be referenced.
        self.uncertain_owners = set()
        # Data objects removed (or, in a dry run, that would be), whose ranges go too.
        self.gone = set()

    def entries(self):
        registry = self.registry
        for name in registry.names():
            path = os.path.join(registry.path, name)
            try:
                entry_stat = registry.stat_entry(name)
                entry = registry.read_entry(name)[0]
            except FileNotFoundError:
                continue
            except PermissionError:
                self.uncertain_owners.add(entry_stat.st_uid)
                continue
            except CorruptEntryError as error:
                self.uncertain_owners.add(entry_stat.st_uid)
                self._keep("entry", path, f"{error.strerror}; its owner can remove it (mshare rm)")
                continue
            self.referenced.add((entry.backend, entry.location))
            try:
                data_stat = os.stat(get_backend(entry.backend).path(entry.location),
                                    follow_symlinks=False)
            except FileNotFoundError:
                data_stat = None
            if data_stat is not None:
                problem = foreign(entry_stat, data_stat)
                if problem is not None:
                    self._keep("entry", path, f"not usable: {problem}")
                continue
            attached = registry.attach_count(entry.addr, entry.end)
            if attached:
                self._keep("entry", path, f"data object gone, but {attached} process(es) still map it")
                continue
            self._remove("entry", path, "its data object vanished", entry_stat.st_uid,
                         lambda: registry.remove_entry(name))

    def data_objects(self):
        for backend in BACKENDS.values():
            for location in backend.locations(self.registry.registry_id):
                if (backend.name, location) in self.referenced:
                    continue
                path = backend.path(location)
                try:
                    data_stat = os.stat(path, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(data_stat.st_mode):
                    self._keep("data object", path, "not a regular file, so not made by mshare")
                elif data_stat.st_uid in self.uncertain_owners:
                    self._keep("data object", path, f"uid {data_stat.st_uid} has entries this user "
                               "cannot read or that are corrupt; one may refer to it")
                elif self._remove("data object", path, "no entry refers to it", data_stat.st_uid,
                                  lambda backend=backend, location=location: backend.unlink(location)):
                    self.gone.add((backend.name, location))

    def temporary_files(self):
        registry = self.registry
        for file_name in sorted(os.listdir(registry.dir_fd)):
            if not file_name.startswith(TEMP_PREFIX):
                continue
            rest = file_name[len(TEMP_PREFIX):]
            public = _PUBLIC_TEMP.match(rest)
            if public and _alive(int(public.group(1))):
                continue
            path = os.path.join(registry.path, file_name)
            if not (_ENTRY_TEMP.match(rest) or public):
                self._keep("temporary file", path, "not named the way mshare names them")
                continue
            try:
                owner = os.stat(file_name, dir_fd=registry.dir_fd, follow_symlinks=False).st_uid
            except FileNotFoundError:
                continue
            self._remove("temporary file", path, "left by an interrupted create", owner,
                         lambda file_name=file_name: _remove_temporary(file_name, registry.dir_fd))

    def ranges(self):
        registry = self.registry
        for claim in sorted(registry.ranges()):
            path = os.path.join(registry.path, claim.file_name)
            try:
                owner = os.stat(claim.file_name, dir_fd=registry.dir_fd, follow_symlinks=False).st_uid
            except FileNotFoundError:
                continue
            backend = BACKENDS.get(claim.backend)
            if backend is None or not claim.location:
                # Empty when a create was killed before writing it.
                stale, held = "empty or unreadable", "empty or unreadable"
            elif (claim.backend, claim.location) in self.gone or not backend.exists(claim.location):
                stale, held = "its data object is gone", "data object gone"
            elif _owner(backend.path(claim.location)) != owner:
                # One creator makes both; a range naming another's data blocks addresses.
                stale = held = "it records another user's data object"
            else:
                continue  # a region's, or an orphan's that was kept above
            if not _unmarked_regular_file(registry, claim.file_name):
                attached = registry.attach_count(claim.start, claim.end)
                self._keep("range", path, f"{held}, still mapped by {attached} process(es)" if attached
                           else "not a regular file, so not made by mshare")
                continue
            self._remove("range", path, f"{stale}, and nobody maps it", owner,
                         lambda file_name=claim.file_name: os.unlink(file_name, dir_fd=registry.dir_fd))

    def _remove(self, kind, path, reason, owner, action):
        """Remove (unless dry-running) what the caller may remove; True if it went."""
        if self.user != 0 and owner != self.user:
            self._keep(kind, path, f"{reason}, but it belongs to uid {owner}: only its owner "
                       "or root may remove it")
            return False
        if not self.dry_run:
            try:
                action()
            except FileNotFoundError:
                return False
        self.report.removed.append(Finding(kind, path, reason))
        return True

    def _keep(self, kind, path, reason):
        self.report.kept.append(Finding(kind, path, reason))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_temporary(file_name, dir_fd):
    """Remove a temporary file, or the empty temporary directory the address index is
    made in (a planted non-empty one stays)."""
    try:
        os.unlink(file_name, dir_fd=dir_fd)
    except IsADirectoryError:
        try:
            os.rmdir(file_name, dir_fd=dir_fd)
        except OSError as error:
            if error.errno != errno.ENOTEMPTY:
                raise


def _owner(path):
    try:
        return os.stat(path, follow_symlinks=False).st_uid
    except FileNotFoundError:
        return None


def _unmarked_regular_file(registry, file_name):
    """True when ``file_name`` is a regular file no process holds a lock on."""
    try:
        descriptor = open_descriptor(file_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                                     | os.O_CLOEXEC, dir_fd=registry.dir_fd)
    except OSError:
        return False
    with descriptor:
        if not stat.S_ISREG(os.fstat(descriptor.fd).st_mode):
            return False
        try:
            fcntl.flock(descriptor.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True

