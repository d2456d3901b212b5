"""The address index: create, attach and unlink touch the same files however many regions
live; list() touches a fixed number per region; a damaged or stale index is rebuilt
rather than trusted."""

import os
import sys
from contextlib import contextmanager

import pytest

import mshare
from consistency import INDEX_DIRECTORY, assert_clean, assert_index_covers_ranges, index_holds_nothing
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
