"""hugepages="auto" | "hugetlb" | "thp" | "off": the choice, the fallback order, the errors.

Most cases run against a described machine (the mount table, pools and THP settings are
replaced), so they hold on any host; the real-mount cases are in test_hugetlb/test_thp.
"""

import errno
import os
import warnings

import pytest

import mshare
from mshare import machine
from mshare.backends import selection
from mshare.machine import HugePagePool, Mount

MiB = 1 << 20


class Machine:
    """A made-up machine: ``mounts`` (path -> (fstype, options, page size, writable)),
    pools of 2 MiB pages, and a shmem_enabled setting."""

    def __init__(self, monkeypatch, mounts=(), free_pages=0, total_pages=0, shmem_enabled="never",
                 free_bytes=1 << 40):
        self.table = {path: details for path, details in mounts}
        monkeypatch.delenv("MSHARE_HUGETLBFS", raising=False)
        monkeypatch.delenv("MSHARE_THP_ROOT", raising=False)
        monkeypatch.setattr(machine, "mounts", self.mounts)
        monkeypatch.setattr(machine, "writable", lambda path: self.table[path][3])
        monkeypatch.setattr("mshare.backends.hugetlb.page_size_and_room",
                            lambda path: (self.table[path][2], None))
        monkeypatch.setattr(machine, "default_huge_page_size", lambda: 2 * MiB)
        monkeypatch.setattr(machine, "pool", lambda size: HugePagePool(
            size, total_pages if size == 2 * MiB else 0, free_pages if size == 2 * MiB else 0, 0, 0, 0))
        monkeypatch.setattr(machine, "thp_setting", lambda setting: shmem_enabled)
        monkeypatch.setattr("mshare.backends.thp._free_bytes", lambda path: free_bytes)

    def mounts(self):
        return [Mount(path, fstype, index, options)
                for index, (path, (fstype, options, _, _)) in enumerate(self.table.items())]


HUGETLBFS = ("/dev/hugepages", ("hugetlbfs", {"mode": "1777"}, 2 * MiB, True))
ROOT_ONLY_HUGETLBFS = ("/dev/hugepages", ("hugetlbfs", {"mode": "755"}, 2 * MiB, False))
HUGE_TMPFS = ("/run/mshare/thp", ("tmpfs", {"huge": "within_size"}, 4096, True))
PLAIN_TMPFS = ("/dev/shm", ("tmpfs", {}, 4096, True))


def choose(hugepages, size=64 * MiB):
    return selection.choose_backend(hugepages, size, lambda page_size: 0)


def test_nothing_set_up_auto_is_shm_silently(monkeypatch):
    Machine(monkeypatch, mounts=[PLAIN_TMPFS])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose("auto").name == "shm"
    assert choose("off").name == "shm"


def test_auto_prefers_hugetlb_then_thp(monkeypatch):
    Machine(monkeypatch, mounts=[HUGETLBFS, HUGE_TMPFS, PLAIN_TMPFS], free_pages=64, total_pages=64)
    chosen = choose("auto", 64 * MiB)
    assert (chosen.name, chosen.directory, chosen.page_size()) == ("hugetlb", "/dev/hugepages", 2 * MiB)
    assert choose("thp").name == "thp" and choose("thp").directory == "/run/mshare/thp"


def test_auto_warns_when_the_pool_is_too_small_and_uses_thp(monkeypatch):
    Machine(monkeypatch, mounts=[HUGETLBFS, HUGE_TMPFS], free_pages=10, total_pages=10)
    with pytest.warns(mshare.HugePagesFallbackWarning, match="has 10 free 2M pages, the region needs 32"):
        assert choose("auto", 64 * MiB).name == "thp"


def test_an_empty_pool_is_not_set_up_so_auto_falls_back_silently(monkeypatch):
    # The common systemd machine: /dev/hugepages mounted for root, no pool at all.
    Machine(monkeypatch, mounts=[ROOT_ONLY_HUGETLBFS, PLAIN_TMPFS])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose("auto").name == "shm"


def test_auto_skips_huge_pages_for_a_region_smaller_than_one(monkeypatch):
    Machine(monkeypatch, mounts=[HUGETLBFS, HUGE_TMPFS], free_pages=64, total_pages=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose("auto", 2 * MiB - 1).name == "shm"
        assert choose("auto", 2 * MiB).name == "hugetlb"
    # Demanded, a small region still gets its huge page.
    assert choose("hugetlb", 100).name == "hugetlb"


def test_demanded_hugetlb_without_a_mount_names_the_fix(monkeypatch):
    Machine(monkeypatch, mounts=[PLAIN_TMPFS])
    with pytest.raises(mshare.HugePagesUnavailableError) as raised:
        choose("hugetlb")
    assert raised.value.errno == errno.ENODEV
    assert raised.value.strerror.startswith("cannot use the hugetlb backend: no hugetlbfs is mounted")
    assert "as root: mshare mount --hugepages" in raised.value.strerror
    assert "mount -t hugetlbfs -o mode=1777 none /dev/hugepages" in raised.value.strerror


def test_demanded_hugetlb_on_a_root_only_mount_names_the_fix(monkeypatch):
    Machine(monkeypatch, mounts=[ROOT_ONLY_HUGETLBFS])
    with pytest.raises(mshare.HugePagesUnavailableError, match="may not create files there"):
        choose("hugetlb")


def test_demanded_hugetlb_with_a_short_pool_says_how_to_grow_it(monkeypatch):
    Machine(monkeypatch, mounts=[HUGETLBFS], free_pages=3, total_pages=7)
    with pytest.raises(mshare.HugePagesUnavailableError) as raised:
        choose("hugetlb", 64 * MiB)
    assert raised.value.errno == errno.ENOMEM
    assert "mshare mount --hugepages 64M" in raised.value.strerror
    assert "echo 36 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages" in raised.value.strerror


def test_demanded_thp_when_the_kernel_denies_it(monkeypatch):
    Machine(monkeypatch, mounts=[HUGE_TMPFS], shmem_enabled="deny")
    with pytest.raises(mshare.HugePagesUnavailableError, match="echo advise > .*shmem_enabled"):
        choose("thp")


def test_force_makes_every_tmpfs_huge_but_dev_shm_stays_shm(monkeypatch):
    other_tmpfs = ("/srv/scratch", ("tmpfs", {}, 4096, True))
    Machine(monkeypatch, mounts=[PLAIN_TMPFS, other_tmpfs], shmem_enabled="force")
    assert choose("thp").directory == "/srv/scratch"
    Machine(monkeypatch, mounts=[PLAIN_TMPFS], shmem_enabled="force")
    with pytest.raises(mshare.HugePagesUnavailableError):
        choose("thp")


@pytest.mark.parametrize("value, error", [(True, TypeError), (None, TypeError), ("on", ValueError),
                                          ("AUTO", ValueError), ("", ValueError)])
def test_bad_hugepages_values_are_refused(registry_path, name, value, error):
    with pytest.raises(error, match="hugepages"):
        mshare.create(name, 4096, hugepages=value)
    assert not os.path.exists(os.path.join(registry_path, name))


def test_off_is_shm_whatever_is_mounted(registry_path, name):
    with mshare.create(name, 4 * MiB, hugepages="off") as region:
        assert (region.backend, region.page_size) == ("shm", os.sysconf("SC_PAGESIZE"))
    mshare.unlink(name)
