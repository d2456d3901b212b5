"""Bad input: a clear error naming the problem, and nothing left behind."""

import errno
import os
import shutil

import pytest

import mshare
from mshare.addresses import ALIGNMENT, arena

from mshare.backends.shm import memory_available
from mshare.registry import Registry

from consistency import registry_files
from helpers import SHM, run_with_private_mounts, shm_objects_of


def snapshot(registry_path):
    """What the registry and /dev/shm hold for this registry (its own files aside: the
    directory may be created by a failed call)."""
    if not os.path.isdir(registry_path):
        return [], []
    with Registry(registry_path) as registry:
        objects = shm_objects_of(registry.registry_id)
    return registry_files(registry_path), objects


BAD_NAMES = [
    ("", ValueError, "1 to 255 bytes"),
    ("x" * 256, ValueError, "1 to 255 bytes"),
    ("é" * 128, ValueError, "1 to 255 bytes"),  # 256 bytes in UTF-8
    ("a/b", ValueError, "'/'"),
    ("../etc", ValueError, "'/'"),
    ("nul\0byte", ValueError, "NUL"),
    (".hidden", ValueError, "'.'"),
    (".lock", ValueError, "'.'"),
    ("mshare_info", ValueError, "reserved"),
    ("\udcff", ValueError, "UTF-8"),
    (b"bytes", TypeError, "str"),
    (None, TypeError, "str"),
    (42, TypeError, "str"),
]


@pytest.mark.parametrize("bad, error, message", BAD_NAMES)
@pytest.mark.parametrize("call", ["create", "attach", "unlink", "info"])
def test_bad_names_are_refused(registry_path, bad, error, message, call):
    before = snapshot(registry_path)
    with pytest.raises(error, match=message):
        if call == "create":
            mshare.create(bad, 64)
        else:
            getattr(mshare, call)(bad)
    assert snapshot(registry_path) == before


def test_longest_name_is_accepted(registry_path):
    name = "n" * 255
    with mshare.create(name, 1) as region:
        assert region.name == name
    mshare.unlink(name)


@pytest.mark.parametrize("size, error, message", [
    (0, ValueError, "positive"),
    (-1, ValueError, "positive"),
    (True, TypeError, "int"),
    (1.0, TypeError, "int"),
    ("64", TypeError, "int"),
    (None, TypeError, "int"),
])
def test_bad_sizes_are_refused(registry_path, name, size, error, message):
    before = snapshot(registry_path)
    with pytest.raises(error, match=message):
        mshare.create(name, size)
    assert snapshot(registry_path) == before


@pytest.mark.parametrize("mode, error, message", [
    (-1, ValueError, "0o777"),
    (0o1000, ValueError, "0o777"),
    (0o4755, ValueError, "0o777"),
    (False, TypeError, "int"),
    ("0644", TypeError, "int"),
    (6.0, TypeError, "int"),
])
def test_bad_modes_are_refused(registry_path, name, mode, error, message):
    before = snapshot(registry_path)
    with pytest.raises(error, match=message):
        mshare.create(name, 64, mode=mode)
    assert snapshot(registry_path) == before


@pytest.mark.parametrize("flag", ["readonly", "populate"])
def test_flags_must_be_bool(registry_path, name, flag):
    with pytest.raises(TypeError, match=flag):
        mshare.attach(name, **{flag: 1})


def test_size_beyond_shared_memory_is_a_clear_error_at_create(registry_path, name):
    before = snapshot(registry_path)
    free = shutil.disk_usage(SHM).free
    # Refused before anything is allocated: nothing fills /dev/shm.
    with pytest.raises(OSError, match="not enough space") as raised:
        mshare.create(name, free + (1 << 30), hugepages="off")
    assert raised.value.errno == errno.ENOSPC
    assert snapshot(registry_path) == before


def test_size_beyond_available_memory_is_a_clear_error_at_create(registry_path, name):
    # Usually /dev/shm is half of memory, so the free-space check refuses first. Here the
    # child gets a private /dev/shm larger than memory, as some systems have, so that
    # the memory check is the one that must speak.
    if os.geteuid() != 0:
        pytest.skip("a private /dev/shm larger than memory needs root (a mount namespace)")
    mshare.list()
    before = snapshot(registry_path)
    larger = 2 * memory_available() + (1 << 30)
    result = run_with_private_mounts(f"mount -t tmpfs -o size={larger} tmpfs {SHM}", f"""
        import errno, shutil, mshare
        from mshare.backends.shm import memory_available
        available, free = memory_available(), shutil.disk_usage({SHM!r}).free
        assert free > available, (free, available)
        try:
            mshare.create({name!r}, (available + free) // 2, hugepages="off")
        except OSError as error:
            print(error.errno, error.strerror)
    """)
    code, message = result.stdout.split(" ", 1)
    assert int(code) == errno.ENOMEM and "memory available" in message, result.stdout
    assert snapshot(registry_path) == before


def test_size_beyond_the_arena_is_refused(registry_path, name):
    start, end = arena()
    with pytest.raises(ValueError, match="arena"):
        mshare.create(name, end - start + 1)


@pytest.mark.parametrize("offset, message", [(1, "aligned"), (ALIGNMENT // 2, "aligned")])
def test_misaligned_address_is_refused(registry_path, name, offset, message):
    before = snapshot(registry_path)
    with pytest.raises(ValueError, match=message):
        mshare.create(name, 64, addr=arena()[0] + offset)
    assert snapshot(registry_path) == before


@pytest.mark.parametrize("where", ["below", "above"])
def test_address_outside_the_arena_is_refused(registry_path, name, where):
    start, end = arena()
    addr = start - ALIGNMENT if where == "below" else end
    with pytest.raises(ValueError, match="outside the arena"):
        mshare.create(name, 64, addr=addr)


def test_address_must_be_int(registry_path, name):
    with pytest.raises(TypeError, match="addr"):
        mshare.create(name, 64, addr="0x100000000000")


def test_missing_names(registry_path, name):
    for call in (mshare.attach, mshare.unlink, mshare.info):
        with pytest.raises(FileNotFoundError, match=name):
            call(name)


def test_existing_name(registry_path, name):
    with mshare.create(name, 64):
        before = snapshot(registry_path)
        with pytest.raises(FileExistsError, match="already exists"):
            mshare.create(name, 128)
        assert snapshot(registry_path) == before
    mshare.unlink(name)
