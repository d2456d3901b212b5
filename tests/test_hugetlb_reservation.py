"""A hugetlb region's pages are reserved when its data object is first mapped (a
``MAP_SHARED`` mapping of a hugetlbfs file charges them to the file until it is removed),
not allocated and zeroed at create: shown with real processes on a private mount whose
``size=`` limit makes its accounting this test's alone (``statfs`` counts reserved and
allocated pages alike; ``st_blocks`` only allocated ones)."""

import os
import signal

import mshare

from helpers import run_python

MiB = 1 << 20
PAGE = 2 * MiB


def free_pages(mount):
    """Pages the mount still admits: neither allocated nor reserved."""
    return os.statvfs(mount).f_bavail


def allocated_pages(mount):
    """Pages the mount's files hold now (taken from the pool, zeroed)."""
    return sum(os.stat(os.path.join(mount, name)).st_blocks * 512 // PAGE for name in os.listdir(mount))


def limited_mount(private_mount, monkeypatch, pages):
    mount = private_mount("hugetlbfs", f"mode=1777,pagesize=2M,size={pages * 2}M")
    monkeypatch.setenv("MSHARE_HUGETLBFS", mount)
    return mount


def test_create_reserves_every_page_and_allocates_only_the_bookkeeping(
        registry_path, name, private_mount, hugetlb_pool, monkeypatch):
    mount = limited_mount(private_mount, monkeypatch, 8)
    with mshare.create(name, 3 * PAGE, hugepages="hugetlb") as region:
        assert region.backend == "hugetlb"
        # Three data pages and the bookkeeping page are the region's now; only the
        # bookkeeping page, which create writes, is allocated.
        assert (free_pages(mount), allocated_pages(mount)) == (4, 1)
    # No process maps it: the reservation stays with the data object.
    assert (free_pages(mount), allocated_pages(mount)) == (4, 1)
    mshare.unlink(name)
    assert (free_pages(mount), os.listdir(mount)) == (8, [])


def test_populate_allocates_every_reserved_page(registry_path, name, private_mount, hugetlb_pool,
                                               monkeypatch):
    mount = limited_mount(private_mount, monkeypatch, 8)
    with mshare.create(name, 3 * PAGE, hugepages="hugetlb", populate=True):
        assert (free_pages(mount), allocated_pages(mount)) == (4, 4)
    mshare.unlink(name)
    assert free_pages(mount) == 8


def test_pages_taken_after_the_create_never_make_a_toucher_sigbus(
        registry_path, name, private_mount, hugetlb_pool, monkeypatch):
    mount = limited_mount(private_mount, monkeypatch, 8)
    mshare.create(name, 3 * PAGE, hugepages="hugetlb").close()
    # Another process takes every page the mount still admits, one at a time until refused.
    hog = os.path.join(mount, "hog")
    taken = run_python(f"""
        import errno, os
        fd = os.open({hog!r}, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        pages = 0
        while True:
            try:
                os.posix_fallocate(fd, pages * {PAGE}, {PAGE})
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                break
            pages += 1
        print(pages)
    """).stdout
    assert int(taken) == 4 and free_pages(mount) == 0
    # A process that attaches the region now writes and reads every byte of it.
    toucher = run_python(f"""
        import mshare
        with mshare.attach({name!r}) as region:
            region.buf[:] = b"\\x5a" * region.size
            print(bytes(region.buf).count(b"\\x5a"))
    """, check=False)
    assert toucher.returncode != -signal.SIGBUS, toucher.stderr
    assert (toucher.returncode, toucher.stdout.strip()) == (0, str(3 * PAGE)), toucher.stderr
    os.unlink(hog)
    mshare.unlink(name)
    assert (free_pages(mount), os.listdir(mount)) == (8, [])
