"""Fixtures for the huge-page tests: a hugetlb pool grown for the session, and private
hugetlbfs and huge-page tmpfs mounts per test, all set up as root and taken down again.

Each mount lives under the suite's base directory and is handed to mshare through
``MSHARE_HUGETLBFS`` / ``MSHARE_THP_ROOT`` (child processes inherit them), so tests never
depend on what else is mounted on the machine. Without root they skip, saying why.
"""

import os
import subprocess
import uuid

import pytest

from mshare import machine

BASE = "/tmp/mshare-tests"
PAGE_SIZE_2M = 2 << 20
# The 4 GiB page-table test (2,048 pages and one for the region's header) and a few
# small regions at once, with room to spare.
POOL_PAGES = 2048 + 64


def require_root():
    if os.geteuid() != 0:
        pytest.skip("huge-page tests mount file systems and size the hugetlb pool: they need root")


@pytest.fixture(scope="session")
def hugetlb_pool():
    """At least ``POOL_PAGES`` free 2 MiB pages for the session; whatever was added is
    given back afterwards. Yields the page size."""
    require_root()
    if PAGE_SIZE_2M not in machine.pools():
        pytest.skip("this kernel has no 2 MiB huge pages")
    before = machine.pool(PAGE_SIZE_2M)
    missing = max(0, POOL_PAGES - before.available)
    _set_pool(before.total + missing)
    added = machine.pool(PAGE_SIZE_2M).total - before.total
    try:
        if added < missing:
            pytest.skip(f"the kernel found only {added} of {missing} more free 2 MiB pages")
        yield PAGE_SIZE_2M
    finally:
        _set_pool(max(0, machine.pool(PAGE_SIZE_2M).total - added))


def _set_pool(pages):
    with open(os.path.join(machine.pool_directory(PAGE_SIZE_2M), "nr_hugepages"), "w") as pool:
        pool.write(f"{pages}\n")


@pytest.fixture
def private_mount():
    """``private_mount(fstype, options)`` mounts a fresh file system and returns its path.
    At teardown every mount must be empty (nothing left behind); it is unmounted."""
    require_root()
    made = []

    def mount(fstype, options):
        path = os.path.join(BASE, f"mount-{uuid.uuid4().hex[:12]}")
        os.makedirs(path)
        subprocess.run(["mount", "-t", fstype, "-o", options, "none", path], check=True)
        made.append(path)
        return path

    yield mount
    leftovers = {}
    for path in made:
        if machine.mount_at(path) is not None:
            leftovers[path] = sorted(os.listdir(path))
            for leftover in leftovers[path]:
                os.unlink(os.path.join(path, leftover))
            if subprocess.run(["umount", path]).returncode != 0:
                # Still mapped by a leaked Region: detach it now, free it when unmapped.
                subprocess.run(["umount", "--lazy", path], check=True)
                leftovers[path].append("(still mapped)")
        os.rmdir(path)
    assert not any(leftovers.values()), f"data objects left behind: {leftovers}"


@pytest.fixture
def hugetlbfs(hugetlb_pool, private_mount, monkeypatch):
    """A private hugetlbfs (2 MiB pages, mode 1777), named by ``MSHARE_HUGETLBFS``."""
    path = private_mount("hugetlbfs", "mode=1777,pagesize=2M")
    monkeypatch.setenv("MSHARE_HUGETLBFS", path)
    return path


@pytest.fixture
def thp_root(private_mount, monkeypatch):
    """A private tmpfs mounted ``huge=within_size`` (mode 1777, 512 MiB), named by
    ``MSHARE_THP_ROOT``."""
    if machine.thp_setting("shmem_enabled") in (None, "deny"):
        pytest.skip("transparent huge pages for shared memory are unavailable (shmem_enabled)")
    path = private_mount("tmpfs", "mode=1777,huge=within_size,size=512M")
    monkeypatch.setenv("MSHARE_THP_ROOT", path)
    return path
