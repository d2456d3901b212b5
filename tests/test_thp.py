"""The thp backend: files on a huge-page tmpfs, mapped with transparent huge pages."""

import errno
import os

import pytest

import mshare
from mshare import machine

from helpers import run_python

MiB = 1 << 20


def _shmem_huge_pages():
    machine.settle_counters()
    return machine.meminfo()["ShmemHugePages"] * 1024


def test_thp_region_is_mapped_with_huge_pages(registry_path, name, thp_root):
    before = _shmem_huge_pages()
    with mshare.create(name, 64 * MiB, hugepages="thp") as region:
        # Reserving the file already assembled its huge pages.
        assert _shmem_huge_pages() - before >= 60 * MiB
        region.buf[::4096] = bytes(len(region.buf[::4096]))
        stats = region.stats()
        assert (stats.backend, stats.page_size) == ("thp", 2 * MiB)
        # All of it, the region's bookkeeping after its 64 MiB included.
        assert stats.huge_resident == stats.resident == stats.mapped >= 64 * MiB
        assert not stats.pagetable_sharing
        (data_object,) = os.listdir(thp_root)
        result = run_python(f"""
            import mshare
            with mshare.attach({name!r}) as region:
                region.populate()
                stats = region.stats()
                print(region.backend, region.page_size, stats.huge_resident)
        """)
        assert result.stdout.split() == ["thp", str(2 * MiB), str(stats.mapped)]
    mshare.unlink(name)
    assert os.listdir(thp_root) == []


def test_demanded_thp_without_a_huge_tmpfs_names_the_fix(registry_path, name, tmp_path, monkeypatch):
    monkeypatch.setenv("MSHARE_THP_ROOT", str(tmp_path))
    with pytest.raises(mshare.HugePagesUnavailableError) as raised:
        mshare.create(name, 4 * MiB, hugepages="thp")
    assert raised.value.errno == errno.ENODEV
    assert "is not a tmpfs mount point" in raised.value.strerror
    assert "as root: mshare mount" in raised.value.strerror


def test_full_thp_mount_refuses_demanded_and_auto_falls_back_to_shm(registry_path, name, thp_root,
                                                                   monkeypatch):
    monkeypatch.setenv("MSHARE_HUGETLBFS", thp_root)  # not a hugetlbfs: hugetlb is out too
    with pytest.raises(mshare.HugePagesUnavailableError) as raised:
        mshare.create(name, 600 * MiB, hugepages="thp")
    assert raised.value.errno == errno.ENOSPC and "mount -o remount,size=" in raised.value.strerror
    with pytest.warns(mshare.HugePagesFallbackWarning) as warned:
        region = mshare.create(name, 600 * MiB)
    messages = [str(warning.message) for warning in warned]
    assert any("did not use hugetlb" in message for message in messages)
    assert any("did not use thp" in message and "bytes free" in message for message in messages)
    with region:
        assert (region.backend, region.page_size) == ("shm", 4096)
    mshare.unlink(name)
    assert os.listdir(thp_root) == []
