"""Ranges of regions unlinked while still mapped are released by the next change of the
registry once nobody maps them — also when the last process to map one was a forked
child that left through ``os._exit`` (as every ``multiprocessing`` fork child does) and
so ran no cleanup of its own."""

import os

import mshare
from consistency import RANGE_PREFIX, assert_clean, indexed_gibs


def range_files(registry_path):
    return sorted(f for f in os.listdir(registry_path) if f.startswith(RANGE_PREFIX))


def child_holding_the_mapping():
    """Fork a child that keeps its inherited mapping until told to leave by ``os._exit``;
    returns ``(pid, tell_it_to_leave)`` once the child runs."""
    ready_read, ready_write = os.pipe()
    leave_read, leave_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_read)
        os.close(leave_write)
        os.write(ready_write, b"x")
        os.read(leave_read, 1)
        os._exit(0)
    os.close(ready_write)
    os.close(leave_read)
    assert os.read(ready_read, 1) == b"x"
    os.close(ready_read)

    def leave():
        os.write(leave_write, b"x")
        os.close(leave_write)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status

    return pid, leave


def test_range_of_a_child_that_left_through_os_exit_goes_with_the_next_unlink(registry_path, name):
    bystander = mshare.create("bystander", 4096)
    region = mshare.create(name, 4096)
    _pid, leave = child_holding_the_mapping()
    mshare.unlink(name)
    region.close()
    # The child still maps the region: its range stays reserved.
    assert len(range_files(registry_path)) == 2
    leave()
    # Nobody ran any cleanup when the child went; the next change of the registry (here
    # an unlink, which never scans the registry) releases the range.
    assert len(range_files(registry_path)) == 2
    bystander.close()
    mshare.unlink("bystander")
    assert range_files(registry_path) == []
    assert indexed_gibs(registry_path) == set()


def test_range_of_a_child_that_left_through_os_exit_goes_with_the_next_create(registry_path, name):
    region = mshare.create(name, 4096)
    _pid, leave = child_holding_the_mapping()
    mshare.unlink(name)
    region.close()
    leave()
    with mshare.create("next", 4096) as following:
        # Released before the address was chosen, so the lowest range is free again.
        assert following.addr == region.addr
        assert range_files(registry_path) == [following_range(registry_path)]
    mshare.unlink("next")
    assert range_files(registry_path) == []


def following_range(registry_path):
    (only,) = range_files(registry_path)
    return only


def test_range_still_mapped_by_a_live_child_is_never_handed_out(registry_path, name):
    region = mshare.create(name, 4096)
    _pid, leave = child_holding_the_mapping()
    mshare.unlink(name)
    region.close()
    try:
        with mshare.create("next", 4096) as following:
            assert following.addr != region.addr
        mshare.unlink("next")
        assert len(range_files(registry_path)) == 1
        assert_clean(registry_path, still_mapped=1)
    finally:
        leave()
    mshare.create("last", 4096).close()
    mshare.unlink("last")
    assert range_files(registry_path) == []
