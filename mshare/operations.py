"""create, attach, unlink, info, list: the roads from a name to a mapping.

``create`` goes registry (validate, lock, allocate the address, claim it) -> backend
(make the data object) -> core (map at the address) -> registry (publish the entry)
-> ``Region``. ``attach`` takes the same road reading instead of writing.
"""

import copyreg
import errno
import os
import time
from typing import Callable, List, Optional, Tuple

from mshare import addresses, attach_plan, attachments, binding, faults
from mshare._core import Mapping, address_range_free, map_if_in_place, mark_and_map, names_file
from mshare._shared import BOOKKEEPING_SIZE, Bookkeeping
from mshare.attachments import Attachment, DataIdentity, data_identity
from mshare.backends.selection import choose_backend, validate_hugepages
from mshare.entry import Entry
from mshare.errors import AddressConflictError, CorruptEntryError, MshareError
from mshare.info import ListedRegion, RegionInfo, UnreadableRegion
from mshare.machine import one_mount_view
from mshare.names import validate_mode, validate_name, validate_size
from mshare.owned import Descriptor, Undo, signals_deferred
from mshare.procmaps import describe_occupant
from mshare.region import Region
from mshare.registry import READ_FLAGS, RangeFileInTheWay, Registry, range_file_name, range_marks


def bookkeeping_length(page_size: int) -> int:
    """Bytes after the user's data reserved for the region's own bookkeeping."""
    return addresses.round_up(BOOKKEEPING_SIZE, page_size)


def initialize_bookkeeping(mapping: Mapping, entry: Entry) -> None:
    """Prepare the bookkeeping area of a new region before anyone else can see it."""
    Bookkeeping.over_mapping(mapping, entry.data_length, entry.size,
                             name=mapping.label).initialize()


@one_mount_view
def create(
    name: str, size: int, *, mode: int = 0o600, addr: Optional[int] = None, populate: bool = False,
    hugepages: str = "auto",
) -> Region:
    """Create the region ``name`` of exactly ``size`` bytes and map it.

    ``mode`` is applied exactly (no umask) to the registry entry and the data object.
    ``addr`` chooses the start address (1 GiB aligned, inside the arena); by default the
    registry picks the lowest free one. ``FileExistsError`` if the name is taken.
    ``hugepages`` picks the backend: ``"auto"`` the best available (hugetlb, thp, shm),
    ``"hugetlb"``/``"thp"`` demand one (``HugePagesUnavailableError`` says what is
    missing), ``"off"`` is 4 KiB pages in ``/dev/shm``.

    >>> region = mshare.create("frames", 64 << 20, mode=0o640)
    """
    validate_name(name)
    validate_size(size)
    validate_mode(mode)
    _require_bool(populate, "populate")
    validate_hugepages(hugepages)
    arena_start, arena_end = addresses.arena()
    # Checked before a backend is chosen too, so none is asked to hold the impossible.
    if size > arena_end - arena_start:
        raise ValueError(f"size {size} is larger than the whole address arena")
    backend = choose_backend(hugepages, size, bookkeeping_length)
    page_size = backend.page_size()
    data_length = addresses.round_up(size, page_size)
    map_length = data_length + bookkeeping_length(page_size)
    reserved_length = addresses.round_up(map_length, addresses.ALIGNMENT)
    if reserved_length > arena_end - arena_start:
        raise ValueError(f"size {size} is larger than the whole address arena")
    if addr is not None:
        addresses.check_requested(addr, reserved_length)

    attachments.release_pending()
    with Registry() as registry:
        region_id = os.urandom(8).hex()
        location = backend.location_for(registry.registry_id, region_id)
        # Everything made below is pushed on `undo` in the step that makes it, and
        # `undo` is emptied in the step that hands the region over: an exception at any
        # point leaves either nothing or the complete region. Ctrl-C is held back once,
        # from the lock taken to the region handed over, rather than around each step
        # (two `rt_sigaction` each): the steps in between make files, never wait.
        with registry.locked(), signals_deferred(), attachments.fork_gate, Undo() as undo:
            registry.refuse_existing(name)
            faults.point("create:locked")
            start, mark = _claim_free_range(registry, reserved_length, addr, backend.name,
                                            location, undo)
            faults.point("create:range-claimed")
            data, data_stat = backend.create(location, map_length, mode, undo)
            with data:
                faults.point("create:data-created")
                key = data_identity(backend.name, data_stat)
                mapping = backend.map_new(data, start, map_length, f"region {name!r}")
                undo.callback(mapping.unmap)
            faults.point("create:mapped")
            backend.after_map(mapping)
            entry = Entry(
                addr=start, size=size, data_length=data_length, map_length=map_length,
                reserved_length=reserved_length, page_size=page_size, backend=backend.name,
                region_id=region_id, location=location, creator_pid=os.getpid(),
                created=time.time(),
            )
            initialize_bookkeeping(mapping, entry)
            entry_stat = registry.publish(name, entry.pack(), mode, region_id, undo)
            faults.point("create:published")
            # Now, while a failure can still undo the create, rather than as the lock goes.
            registry.index.save()
            # Registered before the registry lock is released, so that a concurrent
            # attach from another thread shares this mapping instead of mapping again.
            with attachments.table_lock:
                attachment = Attachment(key, registry, name, entry, mapping, mark,
                                        range_file_name(start, start + reserved_length))
                attachments.add(attachment)
                region = Region(attachment, name, False, entry_stat)
                undo.pop_all()
            faults.point("create:marked")
    if populate:
        try:
            region.populate()
        except BaseException:
            region.close()
            unlink(name)
            raise
    return region


def attach(name: str, *, readonly: bool = False, populate: bool = False) -> Region:
    """Map the existing region ``name`` at its address.

    Needs read permission (``readonly=True``, mapped ``PROT_READ``) or read and write
    permission, checked as ``open(2)`` does. A region this process already maps is
    shared, not mapped twice.

    >>> region = mshare.attach("frames", readonly=True)
    """
    validate_name(name)
    _require_bool(readonly, "readonly")
    _require_bool(populate, "populate")
    return _attach(name, readonly, populate, root=None)


def attach_by_pickle(name: str, readonly: bool, registry_path: str) -> Region:
    """Unpickling a ``Region`` attaches it again, in the registry it came from."""
    return _attach(name, readonly, False, root=registry_path)


def _pickle_region(region: Region) -> Tuple[Callable[[str, bool, str], Region], Tuple[str, bool, str]]:
    return attach_by_pickle, (region.name, region.readonly, region.registry_path)


copyreg.pickle(Region, _pickle_region)


def _attach(name: str, readonly: bool, populate: bool, root: Optional[str]) -> Region:
    if attachments.dropped:
        attachments.release_pending()
    opened = attach_plan.open_entry(root, name, not readonly)
    if opened is None:
        region = _attach_explained(name, readonly, root)
    else:
        registry, data, entry_stat = opened
        with registry:
            try:
                plan = attach_plan.ready_plan(registry, data)
                if plan is None:
                    region = _attach_planned_now(registry, name, data, entry_stat, readonly)
                else:
                    region = _attach_entry(registry, name, plan, entry_stat, readonly)
            except (AddressConflictError, FileNotFoundError):
                region = _attach_again(registry, name, readonly)
    if populate:
        region.populate()
    return region


@one_mount_view
def _attach_explained(name: str, readonly: bool, root: Optional[str]) -> Region:
    """Attach the long way, once the short one failed: the registry opened and the entry
    read by ``Registry``, whose errors say what is wrong."""
    with Registry(root) as registry:
        try:
            return _attach_unlocked(registry, name, readonly)
        except (AddressConflictError, FileNotFoundError):
            return _attach_again(registry, name, readonly)


@one_mount_view
def _attach_again(registry: Registry, name: str, readonly: bool) -> Region:
    """A change may have raced this attach: an unlink removing the name and data under it,
    or another thread of this process creating this very region (it maps before the name
    is published and enters the mapping in the table before its lock goes). With the
    registry lock held shared no change is half done, so the answer is the registry's
    once that change is complete."""
    with registry.locked(exclusive=False):
        return _attach_unlocked(registry, name, readonly)


@one_mount_view
def _attach_planned_now(registry: Registry, name: str, data: bytes, entry_stat: os.stat_result,
                        readonly: bool) -> Region:
    """Attach an entry whose plan is new, or names a mount: in one mount view, in which
    the plan's mount checks are made again only if the mount table changed."""
    return _attach_entry(registry, name, attach_plan.plan_for(registry, name, data), entry_stat,
                         readonly)


def _attach_unlocked(registry: Registry, name: str, readonly: bool) -> Region:
    """Attach without the registry lock: entries appear whole (linked into place), and
    ``_map_entry`` proves the data still there once its attach mark is taken."""
    entry, entry_stat = registry.read_entry(name, writable=not readonly)
    return _attach_entry(registry, name, attach_plan.Plan(entry), entry_stat, readonly)


def _attach_entry(registry: Registry, name: str, plan: attach_plan.Plan,
                  entry_stat: os.stat_result, readonly: bool) -> Region:
    """Attach the entry ``plan`` was made from, read (and checked) as ``entry_stat``."""
    entry = plan.entry
    faults.point("attach:entry-read")
    with attachments.table_lock:
        # Mapped here from this very entry file: the kernel has just checked the access
        # asked for on the entry, and the data check made at mapping time still holds.
        attachment = attachments.find_by_entry(registry, name, entry, entry_stat)
        if attachment is not None and (readonly or attachment.mapping.writable):
            return Region(attachment, name, readonly, entry_stat)
    data, device, inode = binding.open_data(name, plan, entry_stat, not readonly)
    with data:
        faults.point("attach:data-opened")
        key = (entry.backend, device, inode)
        with attachments.table_lock:
            attachment = attachments.find(key)
            if attachment is None:
                attachment = _map_entry(registry, name, plan, data, key, not readonly)
                attachments.add(attachment)
            else:
                attachment.check_same_region(registry, name, entry)
                if not readonly and not attachment.mapping.writable:
                    # MAP_FIXED over this process's own mapping of the very same
                    # file (the key is its device and inode), so nothing else moves.
                    attachment.mapping.remap_writable(data.fd)
            return Region(attachment, name, readonly, entry_stat)


def _map_entry(registry: Registry, name: str, plan: attach_plan.Plan, data: Descriptor,
               key: DataIdentity, writable: bool) -> Attachment:
    entry = plan.entry
    label = f"region {name!r}"
    # The usual case in one compiled call (see below for what it proves); anything else
    # is done again step by step, which says what is wrong.
    marked = mark_and_map(registry.dir_fd, plan.range_file, READ_FLAGS, plan.data_path,
                          key[1], key[2], data.fd, entry.addr, entry.map_length, writable,
                          label, faults.struck("attach:marked"))
    if marked is not None:
        owner, mapping = marked
        return _attached(registry, name, plan, key, mapping, Descriptor.owning(owner))
    try:
        mark = registry.hold_range(plan.range_file)
        faults.point("attach:marked")
    except FileNotFoundError:
        _refuse_unlinked(name, plan, key)
        raise CorruptEntryError(
            f"region {name!r}: its address range is not recorded in the registry", name
        ) from None
    except MshareError as error:
        if error.errno == errno.EAGAIN:
            _refuse_unlinked(name, plan, key)  # an unlink is giving the range up
        raise
    try:
        # With the attach mark held, the range stays reserved only if the data object is
        # still in place (see _refuse_unlinked): proved in the same call that maps.
        mapping = map_if_in_place(plan.data_path, key[1], key[2], data.fd, entry.addr,
                                  entry.map_length, writable, label)
    except BaseException:
        mark.close()
        raise
    if mapping is None:
        mark.close()
        raise _unlinked_while_attaching(name)
    return _attached(registry, name, plan, key, mapping, mark)


def _attached(registry: Registry, name: str, plan: attach_plan.Plan, key: DataIdentity,
              mapping: Mapping, mark: Descriptor) -> Attachment:
    """The attachment of a mapping just made, with its mark (dropped should the backend's
    advice on the mapping fail)."""
    try:
        faults.point("attach:mapped")
        plan.backend.after_map(mapping)
    except BaseException:
        mark.close()
        raise
    return Attachment(key, registry, name, plan.entry, mapping, mark, plan.range_file)


def _refuse_unlinked(name: str, plan: attach_plan.Plan, key: DataIdentity) -> None:
    """With the attach mark held, the range stays reserved only if the data object is
    still in place: an unlink removes the data first and then gives the range up unless
    a mark is on it, so data still there now means the unlink (if any) sees this mark."""
    if not names_file(plan.data_path, key[1], key[2]):
        raise _unlinked_while_attaching(name)


def _unlinked_while_attaching(name: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, f"region {name!r} was unlinked while attaching", name)


# Ranges tried by one create when range files the index did not record are in the way.
_CLAIM_ATTEMPTS = 3


def _claim_free_range(registry: Registry, length: int, requested: Optional[int],
                      backend: str, location: str, undo: Undo) -> Tuple[int, Descriptor]:
    """Pick (or check) a start address and claim its range: ``(start, mark)``. A range
    file the address index did not record, in the way of the one to make (another user
    planted it, or a release that failed left it), makes the index be rebuilt from the
    range files, which then records it, and another range be picked."""
    for attempt in range(_CLAIM_ATTEMPTS):
        start = _allocate(registry, length, requested)
        try:
            return start, registry.claim_range(start, start + length, backend, location, undo)
        except RangeFileInTheWay as error:
            if requested is not None:
                raise AddressConflictError(
                    f"address range {start:#x}-{start + length:#x} has a range file the "
                    f"address index did not record ({error.filename}); mshare gc sorts it "
                    "out") from None
            registry.index.rebuild()
    raise MshareError(
        errno.EEXIST, f"range files the address index does not record kept appearing where "
        f"new regions' go ({_CLAIM_ATTEMPTS} tries); another process may be planting them "
        f"in {registry.path}: see mshare gc --dry-run")


def _allocate(registry: Registry, length: int, requested: Optional[int]) -> int:
    """Pick (or check) a start address; called with the registry locked.

    The address index says which ranges the registry holds; this process's own mappings
    are looked up (``/proc/self/maps``) only when the address picked turns out taken here.
    """
    index = registry.index
    if requested is not None:
        if index.overlaps(requested, requested + length):
            raise AddressConflictError(
                f"address range {requested:#x}-{requested + length:#x} overlaps a range taken "
                f"by a live region (or one still mapped after unlink)"
            )
        if not address_range_free(requested, length):
            raise AddressConflictError(
                f"address range {requested:#x}-{requested + length:#x} overlaps "
                f"{describe_occupant(requested, requested + length)} in this process"
            )
        return requested
    start = index.first_free(length)
    if start is not None and not address_range_free(start, length):
        start = index.first_free(length, also_taken=addresses.own_mappings())
    if start is None:
        arena_start, arena_end = addresses.arena()
        raise MshareError(
            errno.ENOMEM,
            f"no free {length:#x}-byte range left in the address arena "
            f"{arena_start:#x}-{arena_end:#x}; unlink regions no longer needed (mshare gc "
            "sweeps leftovers of crashed processes)",
        )
    return start


@one_mount_view
def unlink(name: str) -> None:
    """Remove the name and its data object; existing mappings stay valid until closed.

    Only the owner or root may unlink; others get ``PermissionError``.
    """
    validate_name(name)
    attachments.release_pending()
    # Ctrl-C is held back once, from the lock taken to the index written (the name goes
    # with its data object, or neither does), rather than around each step.
    with Registry() as registry, registry.locked(), signals_deferred():
        faults.point("unlink:locked")
        entry, entry_stat = _readable_entry(registry, name)
        registry.remove_entry(name)
        faults.point("unlink:entry-removed")
        if entry is not None:
            binding.remove_data(registry, entry, entry_stat)
        registry.save_index()


def _readable_entry(registry: Registry, name: str) -> Tuple[Optional[Entry], os.stat_result]:
    """The entry to unlink (``None`` when it is damaged beyond identifying its data) and
    its ``stat``, once the caller is shown to be its owner or root."""
    try:
        entry, entry_stat = registry.read_entry(name)
    except PermissionError:
        entry_stat = _refuse_unless_owner(registry.stat_entry(name), name)
        return registry.read_own_unreadable_entry(name)[0], entry_stat
    except CorruptEntryError:
        return None, _refuse_unless_owner(registry.stat_entry(name), name)
    return entry, _refuse_unless_owner(entry_stat, name)


def _refuse_unless_owner(entry_stat: os.stat_result, name: str) -> os.stat_result:
    user = os.geteuid()
    if user != 0 and entry_stat.st_uid != user:
        raise PermissionError(
            errno.EPERM,
            f"only the owner (uid {entry_stat.st_uid}) or root may unlink region {name!r}",
            name,
        )
    return entry_stat


@one_mount_view
def info(name: str) -> RegionInfo:
    """The ``RegionInfo`` of ``name``; needs read permission on it."""
    validate_name(name)
    attachments.release_pending()
    with Registry() as registry:
        entry, entry_stat = registry.read_entry(name)
        return RegionInfo.from_entry(name, entry, entry_stat,
                                     registry.attach_count(entry.addr, entry.end))


@one_mount_view
def list_regions() -> List[ListedRegion]:
    """Every region of the registry, sorted by name; never fails because of one entry: one
    the caller may not read, or that is damaged, is an ``UnreadableRegion``."""
    attachments.release_pending()
    with Registry() as registry:
        found: List[ListedRegion] = []
        marks = range_marks()
        for name in registry.names():
            try:
                entry, entry_stat = registry.read_entry(name)
            except FileNotFoundError:
                continue
            except PermissionError:
                try:
                    found.append(UnreadableRegion.from_stat(name, registry.stat_entry(name), "no access"))
                except FileNotFoundError:
                    pass
                continue
            except CorruptEntryError as error:
                try:
                    found.append(UnreadableRegion.from_stat(
                        name, registry.stat_entry(name), f"corrupt: {error.strerror}"))
                except FileNotFoundError:
                    pass
                continue
            found.append(RegionInfo.from_entry(name, entry, entry_stat,
                                               registry.attach_count(entry.addr, entry.end, marks)))
        return found


def _require_bool(value: object, what: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be bool, not {type(value).__name__}")
