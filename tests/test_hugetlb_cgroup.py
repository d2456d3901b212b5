"""A creator under a hugetlb cgroup limit allocates its region's pages at create.

The hugetlb controller charges a page to whoever first touches it, and a touch past the
limit is a SIGBUS; so under a limit mshare allocates (and charges) every page at create,
where going over is an error, instead of leaving them to the mapping's reservation. Shown
with a real cgroup (v2, the unified hierarchy) and a private size-limited hugetlbfs mount
whose accounting is this test's alone."""

import os
import uuid

import pytest

import mshare
from mshare import machine

from helpers import run_python
from hugepage_fixtures import require_root
from test_hugetlb_reservation import PAGE, allocated_pages, free_pages, limited_mount


@pytest.fixture
def limited_cgroup():
    """``limited_cgroup(pages)``: a new cgroup allowing ``pages`` 2 MiB huge pages, as the
    path of its ``cgroup.procs``; removed afterwards (its processes have ended)."""
    require_root()
    unified = [mount.mount_point for mount in machine.visible_mounts("cgroup2")]
    if not unified:
        pytest.skip("no cgroup v2 hierarchy is mounted")
    root = unified[0]
    try:
        with open(os.path.join(root, "cgroup.controllers")) as controllers:
            available = controllers.read().split()
    except OSError as error:
        pytest.skip(f"cgroup v2 at {root} cannot be read: {error}")
    if "hugetlb" not in available:
        pytest.skip(f"the hugetlb controller is not available in the cgroup v2 hierarchy at {root}")
    control = os.path.join(root, "cgroup.subtree_control")
    with open(control) as enabled:
        was_enabled = "hugetlb" in enabled.read().split()
    made = []

    def make(pages):
        if not was_enabled:
            with open(control, "w") as enable:
                enable.write("+hugetlb")
        path = os.path.join(root, f"mshare-test-{uuid.uuid4().hex[:12]}")
        os.mkdir(path)
        made.append(path)
        with open(os.path.join(path, "hugetlb.2MB.max"), "w") as limit:
            limit.write(str(pages * PAGE))
        return os.path.join(path, "cgroup.procs")

    yield make
    for path in made:
        os.rmdir(path)
    if made and not was_enabled:
        with open(control, "w") as disable:
            disable.write("-hugetlb")


def create_inside(cgroup_procs, name, size):
    """Run a create of ``name`` in a fresh process that first joins the cgroup."""
    return run_python(f"""
        import mshare
        with open({cgroup_procs!r}, "w") as procs:
            procs.write("0")  # this process
        try:
            mshare.create({name!r}, {size}, hugepages="hugetlb").close()
        except mshare.HugePagesUnavailableError as error:
            print("refused:", error)
        else:
            print("created")
    """).stdout.strip()


def test_a_limited_creator_allocates_every_page_at_create(
        registry_path, name, private_mount, hugetlb_pool, monkeypatch, limited_cgroup):
    mount = limited_mount(private_mount, monkeypatch, 8)
    assert create_inside(limited_cgroup(6), name, 3 * PAGE) == "created"
    # Every page is allocated, charged to the creator: none is left for a toucher's fault.
    # (Unlimited, only the bookkeeping page is: test_hugetlb_reservation.py.)
    assert (free_pages(mount), allocated_pages(mount)) == (4, 4)
    mshare.unlink(name)
    assert (free_pages(mount), os.listdir(mount)) == (8, [])


def test_a_create_over_the_limit_is_refused_and_leaves_nothing(
        registry_path, name, private_mount, hugetlb_pool, monkeypatch, limited_cgroup):
    mount = limited_mount(private_mount, monkeypatch, 8)
    outcome = create_inside(limited_cgroup(2), name, 3 * PAGE)
    assert outcome.startswith("refused:") and "cgroup limit" in outcome, outcome
    # No data object is left. (The mount's own count may keep a page: a refused fallocate
    # under a cgroup limit does that without mshare too, a plain file and os.posix_fallocate.)
    assert os.listdir(mount) == []
    with pytest.raises(FileNotFoundError):
        mshare.attach(name)
