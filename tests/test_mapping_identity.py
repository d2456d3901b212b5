"""Mappings are known by the data object the kernel opened, never by an entry's id.

Whoever may write an entry chooses its region id (ids are public: they are in ``/dev/shm``
file names). A forged entry reusing the id of a victim's private region, or naming the
victim's data object a second time, must never make ``attach`` of the private region
return other bytes, nor make mshare map over the private mapping."""

import os

import pytest

import mshare
from forge import Forger
from mshare import addresses
from mshare.registry import Registry, range_file_name
from people import STRANGER, STRANGER_GROUP

SECRET = b"private bytes of the victim"


@pytest.fixture
def private_region(registry_path):
    region = mshare.create("private", 4096)
    region.buf[:len(SECRET)] = SECRET
    entry, _ = Registry(registry_path).read_entry("private")
    yield region, entry
    region.close()
    mshare.unlink("private")


@pytest.fixture
def forger(registry_path):
    forger = Forger(registry_path, STRANGER, STRANGER_GROUP)
    yield forger
    forger.remove_all()


def free_address(*taken):
    """An aligned address, in the arena, that none of ``taken`` (start addresses) uses."""
    arena_start, arena_end = addresses.arena()
    candidate = arena_end - addresses.ALIGNMENT
    while candidate in taken:
        candidate -= addresses.ALIGNMENT
    return candidate


def plant_shared_region(forger, name, region_id, addr, content):
    """The stranger's own region ``name`` whose entry claims ``region_id`` (its range file
    is the one already recorded when another region holds ``addr``)."""
    own_id = os.urandom(8).hex()
    entry = forger.entry(region_id, addr, location=forger.location(own_id))
    path = forger.plant_data(own_id)
    with open(path, "r+b") as data:
        data.write(content)
    if not os.path.exists(os.path.join(forger.registry_path, range_file_name(addr, entry.end))):
        forger.plant_range(entry.addr, entry.end, entry.location)
    forger.plant_entry(name, entry)
    return entry


def maps_file_at(addr):
    """``(device:inode, path)`` of what this process maps at ``addr`` (or ``None``)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if int(fields[0].split("-")[0], 16) == addr:
                return fields[4], fields[5] if len(fields) > 5 else ""
    return None


def test_attach_of_the_private_region_returns_its_own_bytes(private_region, forger):
    region, entry = private_region
    addr = region.addr
    region.close()
    shared_entry = plant_shared_region(forger, "shared", entry.region_id, free_address(addr),
                                       b"the attacker's bytes")
    with mshare.attach("shared") as shared:
        assert shared.addr == shared_entry.addr
        with mshare.attach("private") as private:
            assert private.addr == addr
            assert bytes(private.buf[:len(SECRET)]) == SECRET
        assert bytes(shared.buf[:20]) == b"the attacker's bytes"


def test_a_writable_attach_of_a_forged_entry_never_remaps_the_private_region(private_region,
                                                                            forger):
    region, entry = private_region
    addr = region.addr
    region.close()
    readonly = mshare.attach("private", readonly=True)
    before = maps_file_at(addr)
    # Same id and same address as the private region: the old cache took it for the
    # private mapping and remapped it writable onto the attacker's file.
    plant_shared_region(forger, "shared", entry.region_id, addr, b"the attacker's bytes")
    with pytest.raises(mshare.AddressConflictError):
        mshare.attach("shared")
    assert maps_file_at(addr) == before
    assert bytes(readonly.buf[:len(SECRET)]) == SECRET
    assert readonly.buf.readonly
    readonly.close()


def test_two_entries_naming_one_data_object_are_refused(private_region, registry_path):
    region, entry = private_region
    # Another entry of the same owner, group and mode naming the private data object at
    # another address: attaching it while the private region is mapped is refused.
    alias = Forger(registry_path, os.geteuid(), os.getegid())
    try:
        forged = alias.entry(os.urandom(8).hex(), free_address(region.addr),
                             length=entry.map_length, location=entry.location,
                             size=entry.size, data_length=entry.data_length)
        alias.plant_range(forged.addr, forged.end, forged.location)
        alias.plant_entry("alias", forged, mode=region.mode)
        with pytest.raises(mshare.CorruptEntryError, match="already maps as region 'private'"):
            mshare.attach("alias")
        assert maps_file_at(forged.addr) is None
        assert bytes(region.buf[:len(SECRET)]) == SECRET
    finally:
        alias.remove_all()
