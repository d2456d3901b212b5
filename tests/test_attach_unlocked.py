"""Attach takes no registry lock, so a change may complete in the middle of one. These tests
stop a real attach between its steps (its own functions, called in order on real files),
let a real unlink and create run there, and check that the attach refuses what it can no
longer prove: a range it marks must be one that stays reserved while it maps it."""

import pytest

import mshare
from mshare import binding, operations
from mshare.attach_plan import Plan
from mshare.procmaps import overlapping
from mshare.registry import Registry


def opened_but_not_marked(name):
    """An attach of ``name`` stopped after it read the entry and opened the data object."""
    registry = Registry()
    entry, entry_stat = registry.read_entry(name, writable=True)
    data, device, inode = binding.open_data(name, Plan(entry), entry_stat, True)
    return registry, entry, data, (entry.backend, device, inode)


def finish(registry, name, entry, data, key):
    """The rest of that attach: mark the range and map."""
    return operations._map_entry(registry, name, Plan(entry), data, key, True)


def test_an_unlink_completed_mid_attach_is_refused(registry_path, name):
    mshare.create(name, 1 << 20, hugepages="off").close()
    registry, entry, data, key = opened_but_not_marked(name)
    with registry, data:
        mshare.unlink(name)  # nobody maps it: the range goes with the name
        with pytest.raises(FileNotFoundError, match="unlinked while attaching"):
            finish(registry, name, entry, data, key)
    assert overlapping(entry.addr, entry.end) == []


def test_a_range_handed_out_again_mid_attach_is_not_taken(registry_path, name):
    """The unlinked region's range goes to a new region before the attach marks it: the
    mark would land on the new region's range file, so mapping the old data there would
    put this process's mapping where the registry now places another region."""
    mshare.create(name, 1 << 20, hugepages="off").close()
    registry, entry, data, key = opened_but_not_marked(name)
    with registry, data:
        mshare.unlink(name)
        with mshare.create(name + "-next", 1 << 20, hugepages="off") as successor:
            address = successor.addr
        assert address == entry.addr  # the same range, recorded by a range file anew
        with pytest.raises(FileNotFoundError, match="unlinked while attaching"):
            finish(registry, name, entry, data, key)
        # The successor's mapping was closed; nothing of the old data is mapped there.
        assert overlapping(entry.addr, entry.end) == []
    assert mshare.info(name + "-next").attached == 0
    mshare.unlink(name + "-next")
