"""The hugetlb backend: regions in the huge page pool, exact sizes, clean failures."""

import errno
import os
import stat
import subprocess
import warnings

import pytest

import mshare
from mshare import addresses, machine
from mshare._core import address_range_free
from mshare.backends.hugetlb import HugetlbBackend
from mshare.owned import Undo
from mshare.registry import Registry

from consistency import registry_files
from helpers import run_python

GiB = 1 << 30
MiB = 1 << 20


def _contents(path):
    return sorted(os.listdir(path))


def test_hugetlb_region_lives_in_the_mount_with_its_mode(registry_path, name, hugetlbfs):
    with mshare.create(name, 5 * MiB + 1, mode=0o640, hugepages="hugetlb") as region:
        assert (region.backend, region.page_size, region.size) == ("hugetlb", 2 * MiB, 5 * MiB + 1)
        assert region.buf.nbytes == 5 * MiB + 1 and bytes(region.buf[-8:]) == bytes(8)
        region.buf[-5:] = b"tail!"
        (data_object,) = _contents(hugetlbfs)
        info = os.stat(os.path.join(hugetlbfs, data_object))
        assert stat.S_IMODE(info.st_mode) == 0o640 and info.st_uid == os.geteuid()
        # The mapping is whole huge pages: 5 MiB + 1 byte takes three.
        assert info.st_size % (2 * MiB) == 0 and info.st_size >= 6 * MiB
        assert mshare.info(name).backend == "hugetlb" and mshare.info(name).page_size == 2 * MiB
        result = run_python(f"""
            import mshare
            with mshare.attach({name!r}) as region:
                print(hex(region.addr), region.backend, region.page_size,
                      bytes(region.buf[-5:]).decode())
        """)
        assert result.stdout.split() == [hex(region.addr), "hugetlb", str(2 * MiB), "tail!"]
    mshare.unlink(name)
    assert _contents(hugetlbfs) == []


def test_a_region_of_whole_gibs_gets_shared_page_tables(registry_path, name, hugetlbfs):
    with mshare.create(name, GiB, hugepages="hugetlb") as region:
        stats = region.stats()
        assert stats.backend == "hugetlb" and stats.page_size == 2 * MiB
        assert stats.pagetable_sharing and stats.shared_span == GiB
        assert region.addr % GiB == 0 and stats.mapped >= GiB
        region.populate()
        assert region.stats().resident == region.stats().huge_resident == stats.mapped
    mshare.unlink(name)


def test_a_region_below_one_gib_does_not_share_page_tables(registry_path, name, hugetlbfs):
    with mshare.create(name, 64 * MiB, hugepages="hugetlb") as region:
        stats = region.stats()
        assert stats.page_size == 2 * MiB and not stats.pagetable_sharing and stats.shared_span == 0
    mshare.unlink(name)


def test_readonly_attach_of_a_hugetlb_region(registry_path, name, hugetlbfs):
    with mshare.create(name, 4 * MiB, hugepages="hugetlb") as region:
        region.buf[:3] = b"abc"
        result = run_python(f"""
            import mshare
            with mshare.attach({name!r}, readonly=True) as region:
                try:
                    region.buf[0] = 1
                except TypeError:
                    print("read-only", bytes(region.buf[:3]).decode())
        """)
        assert result.stdout.split() == ["read-only", "abc"]
    mshare.unlink(name)


def test_pool_too_small_is_an_error_at_create(registry_path, name, hugetlbfs):
    available = machine.pool(2 * MiB).available
    with pytest.raises(mshare.HugePagesUnavailableError) as raised:
        mshare.create(name, (available + 1) * 2 * MiB, hugepages="hugetlb")
    assert raised.value.errno == errno.ENOMEM
    message = raised.value.strerror
    assert f"has {available} free 2M pages" in message and "mshare mount --hugepages" in message
    assert _contents(hugetlbfs) == [] and registry_files(registry_path) == []


def test_a_short_pool_while_reserving_is_a_clean_error_not_sigbus(private_mount, hugetlb_pool):
    # A mount limited to 4 pages runs short exactly where a pool taken by another process
    # would: when the data object is first mapped, which reserves its pages.
    limited = private_mount("hugetlbfs", "mode=1777,pagesize=2M,size=8M")
    backend = HugetlbBackend(limited, 2 * MiB)
    location = backend.location_for("0badcafe", "0123456789abcdef")
    start = addresses.arena()[1] - GiB
    assert address_range_free(start, 16 * MiB)
    with pytest.raises(mshare.HugePagesUnavailableError) as raised, Undo() as undo:
        data, _info = backend.create(location, 16 * MiB, 0o600, undo)
        with data:
            backend.map_new(data, start, 16 * MiB, "region 'short'")
    message = raised.value.strerror
    assert raised.value.errno == errno.ENOMEM and "ran short while reserving 8 2M pages" in message
    assert "mshare mount --hugepages" in message
    assert _contents(limited) == [] and address_range_free(start, 16 * MiB)


def test_mount_size_limit_refuses_demanded_and_auto_falls_back(registry_path, name, private_mount,
                                                               hugetlb_pool, thp_root, monkeypatch):
    limited = private_mount("hugetlbfs", "mode=1777,pagesize=2M,size=8M")
    monkeypatch.setenv("MSHARE_HUGETLBFS", limited)
    with pytest.raises(mshare.HugePagesUnavailableError) as raised:
        mshare.create(name, 16 * MiB, hugepages="hugetlb")
    assert raised.value.errno == errno.ENOSPC and "mount -o remount,size=" in raised.value.strerror
    with pytest.warns(mshare.HugePagesFallbackWarning, match="did not use hugetlb: .*size= limit"):
        region = mshare.create(name, 16 * MiB)
    with region:
        assert region.backend == "thp"
    mshare.unlink(name)
    assert _contents(limited) == []


def test_a_mount_replaced_after_an_attach_is_checked_again(registry_path, name, private_mount,
                                                        hugetlb_pool, monkeypatch):
    """An attach keeps its mount checks only while the mount table is unchanged: once the
    hugetlbfs is gone and a tmpfs holding a look-alike data object is mounted in its place,
    the next attach in the same process refuses the entry instead of mapping that file."""
    mount_point = private_mount("hugetlbfs", "mode=1777,pagesize=2M")
    monkeypatch.setenv("MSHARE_HUGETLBFS", mount_point)
    mshare.create(name, 4 * MiB, hugepages="hugetlb").close()
    with mshare.attach(name) as region:  # checks the location, and the data's file system
        location, map_length = region._entry.location, region._entry.map_length
    subprocess.run(["umount", mount_point], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "none", mount_point], check=True)
    try:
        with open(location, "wb") as planted:
            planted.truncate(map_length)
        os.chmod(location, 0o600)
        with pytest.raises(mshare.CorruptEntryError, match="not a hugetlbfs mount now"):
            mshare.attach(name)
    finally:
        os.unlink(location)
        subprocess.run(["umount", mount_point], check=True)
    mshare.unlink(name)
    with Registry(registry_path) as registry:
        for claim in registry.ranges():
            assert registry.release_range_if_unused(claim)


def test_attach_after_the_mount_vanished_is_a_clear_error(registry_path, name, private_mount,
                                                         hugetlb_pool, monkeypatch):
    mount_point = private_mount("hugetlbfs", "mode=1777,pagesize=2M")
    monkeypatch.setenv("MSHARE_HUGETLBFS", mount_point)
    mshare.create(name, 4 * MiB, hugepages="hugetlb").close()
    # Unmounting a hugetlbfs nobody maps destroys its files, and the region with them.
    os.system(f"umount {mount_point}")
    assert machine.mount_at(mount_point) is None
    with pytest.raises(mshare.CorruptEntryError, match="not a hugetlbfs mount now"):
        mshare.attach(name)
    (listed,) = mshare.list()
    assert listed.status.startswith("corrupt") and "not a hugetlbfs mount now" in listed.status
    mshare.unlink(name)
    assert mshare.list() == []
    with Registry(registry_path) as registry:
        # The freed range goes with the next allocation (or mshare gc).
        for claim in registry.ranges():
            assert registry.release_range_if_unused(claim)


def test_a_tampered_location_is_refused(registry_path, name, hugetlbfs, tmp_path):
    with mshare.create(name, 2 * MiB, hugepages="hugetlb") as region:
        with Registry(registry_path) as registry:
            entry = registry.read_entry(name)[0]
            elsewhere = str(tmp_path / os.path.basename(entry.location))
            backend = HugetlbBackend()
            # The right name in a directory that is not a hugetlbfs mount, and a path
            # that climbs out of the mount: both refused before anything is opened.
            assert not backend.owns_location(elsewhere, registry.registry_id)
            assert not backend.owns_location(
                f"{hugetlbfs}/../{os.path.basename(entry.location)}", registry.registry_id)
            assert not backend.owns_location(entry.location, "ffffffff")
            assert backend.owns_location(entry.location, registry.registry_id)
            # A planted file of the right name elsewhere is refused even when opened.
            with open(elsewhere, "wb") as planted:
                planted.write(bytes(2 * MiB))
            with pytest.raises(mshare.CorruptEntryError, match="not on a hugetlbfs"):
                backend.open(elsewhere, False)
            backend.unlink(elsewhere)
            assert os.path.exists(elsewhere)
        assert region.backend == "hugetlb"
    mshare.unlink(name)


def test_another_user_attaches_a_hugetlb_region(registry_path, name, hugetlbfs, user_site):
    with mshare.create(name, 2 * MiB, mode=0o644, hugepages="hugetlb") as region:
        region.buf[:5] = b"hello"
        result = run_python(f"""
            import mshare
            with mshare.attach({name!r}, readonly=True) as region:
                print(region.backend, bytes(region.buf[:5]).decode())
            try:
                mshare.attach({name!r})
            except PermissionError:
                print("no write")
        """, user="nobody")
        assert result.stdout.split() == ["hugetlb", "hello", "no", "write"]
    mshare.unlink(name)


def test_auto_uses_hugetlb_only_for_at_least_one_huge_page(registry_path, name, hugetlbfs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with mshare.create(name, 2 * MiB - 1) as small:
            assert small.backend == "shm"
        with mshare.create(name + "-big", 2 * MiB) as big:
            assert (big.backend, big.page_size) == ("hugetlb", 2 * MiB)
    mshare.unlink(name)
    mshare.unlink(name + "-big")


def test_gc_removes_what_a_crashed_create_left_on_hugetlbfs(registry_path, name, hugetlbfs):
    # The creator dies once its data object exists and its pages are reserved.
    result = run_python(f"""
        import mshare
        mshare.create({name!r}, 4 * (1 << 20), hugepages="hugetlb")
    """, env=dict(os.environ, MSHARE_FAULT="create:data-created"), check=False)
    assert result.returncode == -9
    (orphan,) = _contents(hugetlbfs)
    report = mshare.gc()
    removed = {(finding.kind, finding.path) for finding in report.removed}
    assert ("data object", os.path.join(hugetlbfs, orphan)) in removed
    assert _contents(hugetlbfs) == [] and mshare.list() == []
