"""The registry: layout, entry format, damaged entries, unsafe directories."""

import os
import stat
import struct
import zlib

import pytest

import mshare
from mshare.addresses import ALIGNMENT
from mshare.registry import Registry

from helpers import run_python, shm_objects_of


def test_registry_is_created_sticky_and_world_writable(registry_path, name):
    old_umask = os.umask(0o077)
    try:
        mshare.create(name, 64).close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(registry_path).st_mode) == 0o1777
    with open(os.path.join(registry_path, "mshare_info")) as info:
        assert int(info.read()) == ALIGNMENT
    mshare.unlink(name)


def test_entry_layout_matches_the_documented_format(registry_path, name):
    with mshare.create(name, 5000, mode=0o640) as region:
        with open(os.path.join(registry_path, name), "rb") as entry_file:
            data = entry_file.read()
        assert data[:4] == b"MSHR"
        version, fixed, pid = struct.unpack_from("<HHI", data, 4)
        addr, size, data_length, map_length, reserved, page = struct.unpack_from("<6Q", data, 16)
        (created,) = struct.unpack_from("<d", data, 64)
        backend = data[72:88].rstrip(b"\0").decode()
        (location_length,) = struct.unpack_from("<H", data, 104)
        location = data[108:108 + location_length].decode()
        (crc,) = struct.unpack_from("<I", data, 108 + location_length)
        assert (version, fixed, pid) == (1, 108, os.getpid())
        assert (addr, size, page, backend) == (region.addr, 5000, region.page_size, "shm")
        assert data_length == 8192 and map_length >= data_length and reserved % ALIGNMENT == 0
        assert crc == zlib.crc32(data[:108 + location_length])
        assert os.path.exists("/dev/shm" + location)
        assert abs(created - mshare.info(name).created) < 1e-6
        assert len(data) == 108 + location_length + 4
    mshare.unlink(name)


def _rewrite(path, transform):
    with open(path, "rb") as entry_file:
        data = bytearray(entry_file.read())
    data = transform(data)
    os.chmod(path, 0o600)
    with open(path, "wb") as entry_file:
        entry_file.write(data)


def _with_crc(data):
    body = bytes(data[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


DAMAGE = {
    "truncated": (lambda d: d[:50], "truncated"),
    "bad magic": (lambda d: b"XXXX" + d[4:], "magic"),
    "unknown version": (lambda d: _with_crc(d[:4] + struct.pack("<H", 9) + d[6:]), "version 9"),
    "flipped byte": (lambda d: d[:20] + bytes([d[20] ^ 0xFF]) + d[21:], "checksum"),
    "misaligned address": (
        lambda d: _with_crc(d[:16] + struct.pack("<Q", struct.unpack_from("<Q", d, 16)[0] + 4096) + d[24:]),
        "aligned",
    ),
    "foreign location": (
        lambda d: _with_crc(d[:108] + b"/etc/passwd"[: len(d) - 112].ljust(len(d) - 112, b"x") + d[-4:]),
        "not a data object of this registry",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_entry_is_refused_listed_and_removable(registry_path, name, damage):
    transform, message = DAMAGE[damage]
    mshare.create(name, 64).close()
    _rewrite(os.path.join(registry_path, name), transform)
    with pytest.raises(mshare.CorruptEntryError, match=message):
        mshare.attach(name)
    with pytest.raises(mshare.CorruptEntryError):
        mshare.info(name)
    (listed,) = mshare.list()
    assert isinstance(listed, mshare.UnreadableRegion)
    assert listed.name == name and listed.status.startswith("corrupt")
    mshare.unlink(name)
    assert name not in os.listdir(registry_path)
    # The data object could not be identified from the damaged entry: sweep it here.
    with Registry(registry_path) as registry:
        for data_object in shm_objects_of(registry.registry_id):
            os.unlink(f"/dev/shm/{data_object}")
        for claim in registry.ranges():
            registry.release_range_if_unused(claim)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_planted_non_files_are_never_followed(registry_path, name, kind, tmp_path):
    mshare.create("real", 64).close()
    planted = os.path.join(registry_path, name)
    if kind == "symlink":
        os.symlink(os.path.join(registry_path, "real"), planted)
    elif kind == "fifo":
        os.mkfifo(planted)
    else:
        os.mkdir(planted)
    with pytest.raises(mshare.CorruptEntryError, match="not a regular file"):
        mshare.attach(name)
    listed = {info.name: info.status for info in mshare.list()}
    assert listed["real"] == "ok" and listed[name].startswith("corrupt")
    if kind == "directory":
        os.rmdir(planted)
    else:
        mshare.unlink(name)
    assert name not in os.listdir(registry_path)
    mshare.unlink("real")


def test_unreadable_entries_show_what_stat_tells(registry_path, name):
    mshare.create(name, 64, mode=0o000).close()
    listed = mshare.list()
    assert [(i.name, i.mode, i.status) for i in listed] == [(name, 0, "ok")]  # root reads all
    mshare.unlink(name)


def test_symlinked_registry_is_refused(registry_path, tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    monkeypatch.setenv("MSHARE_ROOT", str(link))
    with pytest.raises(mshare.UnsafeRegistryError, match="symbolic link"):
        mshare.list()


def test_world_writable_registry_without_sticky_bit_is_refused(tmp_path, monkeypatch):
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    monkeypatch.setenv("MSHARE_ROOT", str(loose))
    with pytest.raises(mshare.UnsafeRegistryError, match="chmod \\+t"):
        mshare.create("x", 64)
    assert os.listdir(loose) == []


def test_registry_owned_by_another_user_is_refused(registry_path, user_site):
    foreign = registry_path + "-foreign"
    os.mkdir(foreign)
    try:
        os.chmod(foreign, 0o1777)
        os.chown(foreign, 4321, 4321)
        code = (
            "import mshare\ntry:\n    mshare.list()\n"
            "except mshare.UnsafeRegistryError as e:\n    print(e)"
        )
        environment = {**os.environ, "MSHARE_ROOT": foreign}
        for user in (0, 1234):  # root too: the owner could swap entries under it
            result = run_python(code, user=user, group=user, env=environment)
            assert "owned by uid 4321" in result.stdout
        # Its owner may use it.
        assert run_python(code, user=4321, group=4321, env=environment).stdout == ""
    finally:
        import shutil

        shutil.rmtree(foreign)
