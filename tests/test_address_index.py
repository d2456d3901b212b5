"""The address index: create, attach and unlink touch the same files however many regions
live; list() touches a fixed number per region; a damaged or stale index is rebuilt
rather than trusted."""

import os
import sys
from contextlib import contextmanager

import pytest

import mshare
from consistency import INDEX_DIRECTORY, assert_clean, assert_index_covers_ranges, index_holds_nothing
from helpers import run_python
from mshare.registry import Registry, range_file_name
from people import STRANGER

# Audit events that touch the file system by name or read a directory.
FILE_EVENTS = ("open", "os.listdir", "os.scandir")
_seen = []
_listening = [False]


def _listen(event, args):
    if _listening[0] and event in FILE_EVENTS:
        _seen.append((event, str(args[0]) if args else ""))


sys.addaudithook(_listen)  # audit hooks cannot be removed; this one only records when asked


@contextmanager
def file_events():
    """Collects ``(event, path)`` of every open and directory listing in the block."""
    _seen.clear()
    _listening[0] = True
    try:
        yield _seen
    finally:
        _listening[0] = False


def live_regions(count, prefix="live"):
    names = [f"{prefix}-{index}" for index in range(count)]
    for name in names:
        mshare.create(name, 4096, hugepages="off").close()
    return names


def round_trip_events(name):
    with file_events() as seen:
        region = mshare.create(name, 4096, hugepages="off")
        mshare.attach(name).close()
        region.close()
        mshare.unlink(name)
    return list(seen)


def test_files_touched_per_round_trip_do_not_grow_with_live_regions(registry_path):
    names = live_regions(10)
    round_trip_events("warm-up")
    with_ten = round_trip_events("probe")
    names += live_regions(290, prefix="more")
    with_three_hundred = round_trip_events("probe")
    assert len(with_three_hundred) == len(with_ten), (with_ten, with_three_hundred)
    for name in names:
        mshare.unlink(name)


def test_create_and_attach_read_no_process_tables(registry_path, name):
    round_trip_events("warm-up")
    paths = {path for _event, path in round_trip_events(name)}
    for table in ("/proc/self/maps", "/proc/self/mountinfo", "/proc/locks"):
        assert table not in paths


def test_list_touches_a_fixed_number_of_files_per_region(registry_path):
    counts = {}
    made = []
    for total in (10, 20, 40):
        made += live_regions(total - len(made), prefix=f"upto{total}")
        with file_events() as seen:
            assert len(mshare.list()) == total
        counts[total] = len(seen)
    per_region = (counts[20] - counts[10]) / 10
    assert per_region == (counts[40] - counts[20]) / 20
    assert per_region <= 2  # the entry, and the data object of a huge-page backend
    for name in made:
        mshare.unlink(name)


def test_a_damaged_index_is_rebuilt_not_trusted(registry_path, name):
    # Not mapped here, so nothing but the index keeps its range from being handed out.
    mshare.create(name, 4096).close()
    first = mshare.info(name)
    (index_file,) = os.listdir(os.path.join(registry_path, INDEX_DIRECTORY))
    with open(os.path.join(registry_path, INDEX_DIRECTORY, index_file), "r+b") as index:
        index.write(b"\0" * 64)  # as if every range were free
    with mshare.create("second", 4096) as second:
        assert second.addr != first.addr
        assert_clean(registry_path)
    for region_name in (name, "second"):
        mshare.unlink(region_name)
    # Emptied, the index stays: only this user's file, whole, marking nothing.
    assert os.listdir(os.path.join(registry_path, INDEX_DIRECTORY)) == [str(os.geteuid())]
    assert index_holds_nothing(registry_path)


def test_an_emptied_index_is_kept_for_the_next_create(registry_path, name):
    # The last unlink leaves the index marking nothing; the next create uses it as it is
    # rather than making its directory and file again.
    mshare.create(name, 4096).close()
    mshare.unlink(name)
    directory = os.path.join(registry_path, INDEX_DIRECTORY)
    own_file = os.path.join(directory, str(os.geteuid()))
    kept = os.stat(directory).st_ino, os.stat(own_file).st_ino
    assert index_holds_nothing(registry_path)
    with mshare.create(name, 4096) as region:
        assert (os.stat(directory).st_ino, os.stat(own_file).st_ino) == kept
        assert_index_covers_ranges(registry_path)
        first = region.addr
    mshare.unlink(name)
    with mshare.create(name, 4096) as region:
        assert region.addr == first  # the range was given back, not lost
    mshare.unlink(name)


def test_an_index_missing_its_ranges_is_rebuilt_from_them(registry_path, name):
    mshare.create(name, 4096).close()
    first = mshare.info(name)
    index_directory = os.path.join(registry_path, INDEX_DIRECTORY)
    for file_name in os.listdir(index_directory):
        os.unlink(os.path.join(index_directory, file_name))
    os.rmdir(index_directory)
    with mshare.create("second", 4096) as second:
        assert second.addr != first.addr
        assert_index_covers_ranges(registry_path)
    for region_name in (name, "second"):
        mshare.unlink(region_name)


def test_a_range_file_the_index_does_not_record_is_stepped_around(registry_path, name):
    """The index fresh, but missing a range file in the way of the next create (a planted
    file, or a failed release's): the create rebuilds the index and takes another range,
    instead of failing on that file until gc runs."""
    with mshare.create(name, 4096) as region:
        start, end = region.addr, region.addr + (1 << 30)
    mshare.unlink(name)
    # A range file naming a data object that exists: no index rebuild frees it.
    location = f"/mshare-planted-{os.getpid()}"
    open("/dev/shm" + location, "x").close()
    range_file = os.path.join(registry_path, range_file_name(start, end))
    try:
        with open(range_file, "x") as planted:
            planted.write(f"shm {location}\n")
        os.chmod(range_file, 0o444)
        with Registry(registry_path) as registry, registry.locked():
            registry.index.remove(start, end, os.geteuid())  # saved with the directory as it is
        with mshare.create("second", 4096) as second:
            assert second.addr != start
            assert_index_covers_ranges(registry_path)
        mshare.unlink("second")
        with open(range_file) as planted:
            assert planted.read() == f"shm {location}\n"
    finally:
        os.unlink("/dev/shm" + location)
        os.unlink(range_file)
        mshare.gc()  # the next change finds the directory changed and rebuilds the index


def test_a_release_that_runs_out_of_descriptors_keeps_the_range(registry_path, name):
    """The last close of an unlinked region, with no descriptor left to open its range
    file: the range is not taken for gone (its bits stay with its file), so the next
    create works once descriptors are back."""
    run_python_in_this_registry = f"""
        import os, resource, mshare
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        for free in range(1, 8):  # each count of free descriptors the release may meet
            with mshare.create({name!r} + str(free), 4096) as region:
                pass
            region = mshare.create({name!r}, 4096)
            mshare.unlink({name!r})
            # The listing's own descriptor counts, so this leaves `free` of them.
            open_now = len(os.listdir("/proc/self/fd")) - 1
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + free, hard))
            try:
                region.close()
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            mshare.unlink({name!r} + str(free))
        with mshare.create("after", 4096) as after:
            print(after.addr != 0)
        mshare.unlink("after")
    """
    assert run_python(run_python_in_this_registry).stdout.split() == ["True"]
    assert_index_covers_ranges(registry_path)
    mshare.gc()


def _plant_index_file(registry_path, file_name, content, owner):
    directory = os.path.join(registry_path, INDEX_DIRECTORY)
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o1777)
    path = os.path.join(directory, file_name)
    with open(path, "wb") as planted:
        planted.write(content)
    os.chown(path, owner, owner)
    return path


def test_another_users_garbage_in_the_index_costs_a_rebuild_not_a_range(registry_path, name):
    if os.geteuid() != 0:
        pytest.skip("planting another user's file needs root")
    mshare.create(name, 4096).close()
    first = mshare.info(name)
    planted = _plant_index_file(registry_path, str(STRANGER), b"MSIX" + b"\xff" * 60, STRANGER)
    with mshare.create("second", 4096) as second:
        assert second.addr != first.addr
    assert_index_covers_ranges(registry_path)
    for region_name in (name, "second"):
        mshare.unlink(region_name)
    # With the last range, root's unlink took every file of the index away, garbage too.
    assert not os.path.exists(planted)


def test_an_index_file_under_this_users_name_but_anothers_is_refused_cleanly(registry_path, name):
    if os.geteuid() != 0:
        pytest.skip("planting another user's file needs root")
    mshare.list()
    _plant_index_file(registry_path, str(os.geteuid()), b"", STRANGER)
    with pytest.raises(mshare.UnsafeRegistryError, match=f"{INDEX_DIRECTORY}/0 is not a file of uid 0"):
        mshare.create(name, 4096)
    # Nothing of the region was made, and root, finding the index empty, replaced the
    # planted file by one of its own that marks nothing.
    assert [f for f in os.listdir(registry_path) if f.startswith(".range-") or f == name] == []
    index_file = os.path.join(registry_path, INDEX_DIRECTORY, str(os.geteuid()))
    assert os.stat(index_file).st_uid == os.geteuid()
    assert index_holds_nothing(registry_path)


@pytest.mark.parametrize("kind", ["directory", "symlink"])
def test_a_directory_or_link_under_this_users_index_name_is_refused_cleanly(registry_path,
                                                                           name, kind):
    """What another user can plant under this user's name in the sticky index directory:
    the create names the file and who may remove it, and makes nothing."""
    mshare.list()
    path = os.path.join(registry_path, INDEX_DIRECTORY, str(os.geteuid()))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.chmod(os.path.dirname(path), 0o1777)
    if os.path.lexists(path):
        os.unlink(path)
    if kind == "directory":
        os.mkdir(path)
    else:
        os.symlink("/etc/passwd", path)
    try:
        with pytest.raises(mshare.UnsafeRegistryError,
                           match=f"{INDEX_DIRECTORY}/{os.geteuid()} is not a file of uid "
                                 f"{os.geteuid()}.*owner or root must remove it"):
            mshare.create(name, 4096)
        assert [f for f in os.listdir(registry_path)
                if f.startswith(".range-") or f == name] == []
    finally:
        (os.rmdir if kind == "directory" else os.unlink)(path)
