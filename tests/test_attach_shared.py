"""An attach of a region this process maps already shares the mapping it finds through
the entry file it read, without opening the data object again. These tests check that
only the very same entry, unchanged, leads there: anything else takes the whole road
and its checks."""

import os

import pytest

import mshare
from mshare.errors import CorruptEntryError


def test_the_same_entry_shares_the_mapping(registry_path, name):
    with mshare.create(name, 1 << 20) as created:
        created.buf[:5] = b"hello"
        with mshare.attach(name) as attached:
            assert attached.addr == created.addr
            assert bytes(attached.buf[:5]) == b"hello"
            attached.buf[:5] = b"world"
            assert bytes(created.buf[:5]) == b"world"
    mshare.unlink(name)


def test_a_region_made_anew_under_the_name_is_not_the_one_mapped_here(registry_path, name):
    old = mshare.create(name, 1 << 20)
    old.buf[:3] = b"old"
    mshare.unlink(name)
    with mshare.create(name, 1 << 20) as new:
        new.buf[:3] = b"new"
        # The old one is still mapped, so its range stays reserved and the new one lies
        # elsewhere.
        with mshare.attach(name) as attached:
            assert attached.addr == new.addr != old.addr
            assert bytes(attached.buf[:3]) == b"new"
    old.close()
    mshare.unlink(name)


def test_an_entry_whose_mode_changed_is_checked_again(registry_path, name):
    """chmod of the entry alone (not its data): the attach that opens the data refuses the
    mismatch, and so must one of a region mapped here."""
    entry = os.path.join(registry_path, name)
    with mshare.create(name, 1 << 20, mode=0o600):
        os.chmod(entry, 0o640)
        with pytest.raises(CorruptEntryError, match="differs from its data's"):
            mshare.attach(name)
        os.chmod(entry, 0o600)  # unlink leaves data that is not the entry's alone
    mshare.unlink(name)


def test_a_writable_attach_of_a_read_only_mapping_remaps_it(registry_path, name):
    mshare.create(name, 1 << 20).close()
    with mshare.attach(name, readonly=True) as reader:
        assert reader.readonly
        with mshare.attach(name) as writer:
            writer.buf[:2] = b"ok"
            assert bytes(reader.buf[:2]) == b"ok"
    mshare.unlink(name)
