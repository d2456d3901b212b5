"""mshare.shared_memory.SharedMemory: the stdlib's observable behaviour, and what mshare adds."""

import os
import pickle
import re
import subprocess
import sys

import numpy
import pytest

import mshare
from mshare import shared_memory

from helpers import run_python


@pytest.fixture
def block(registry_path):
    """A fresh 4096-byte block, unlinked afterwards unless the test did so."""
    created = shared_memory.SharedMemory(create=True, size=4096)
    yield created
    created.close()
    try:
        created.unlink()
    except FileNotFoundError:
        pass


def test_generated_name_looks_like_the_stdlib_one_and_is_an_mshare_region(block):
    assert re.fullmatch(r"psm_[0-9a-f]{8}", block.name)
    assert [region.name for region in mshare.list()] == [block.name]
    assert block.region.name == block.name


def test_mshare_ls_lists_the_block(block):
    listing = subprocess.run([sys.executable, "-m", "mshare", "ls"], capture_output=True,
                             text=True, check=True, cwd="/")
    assert block.name in listing.stdout


def test_size_is_exactly_what_was_asked_and_attach_ignores_size(registry_path, name):
    created = shared_memory.SharedMemory(name, create=True, size=5000)
    attached = shared_memory.SharedMemory(name, size=20 * 5000)
    try:
        assert (created.size, len(created.buf)) == (5000, 5000)
        assert (attached.size, len(attached.buf)) == (5000, 5000)
    finally:
        attached.close()
        created.close()
        created.unlink()


def test_a_leading_slash_names_the_same_block(registry_path, name):
    created = shared_memory.SharedMemory("/" + name, create=True, size=16)
    try:
        assert created.name == "/" + name
        created.buf[:2] = b"ok"
        attached = shared_memory.SharedMemory(name)
        assert bytes(attached.buf[:2]) == b"ok"
        attached.close()
        with pytest.raises(FileExistsError):
            shared_memory.SharedMemory(name, create=True, size=16)
    finally:
        created.close()
        created.unlink()


@pytest.mark.parametrize("bad_name", ["a/b", "has\0nul", ".hidden", ""])
def test_names_mshare_cannot_hold_are_refused_before_anything_is_made(registry_path, bad_name):
    with pytest.raises(ValueError):
        shared_memory.SharedMemory(bad_name, create=True, size=16)
    assert mshare.list() == []


@pytest.mark.parametrize("arguments, message", [
    ({"create": True, "size": -2}, "positive integer"),
    ({"create": True, "size": 0}, "different from zero"),
    ({"create": True}, "different from zero"),
    ({}, "only be None if create=True"),
    ({"create": True, "size": 16, "readonly": True}, "attach it with readonly=True"),
])
def test_bad_arguments_raise_value_error_and_leave_nothing(registry_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        shared_memory.SharedMemory(**arguments)
    assert mshare.list() == []


def test_a_tracked_block_the_owner_cannot_read_is_refused(registry_path):
    with pytest.raises(ValueError, match="track=True needs a mode the owner can read"):
        shared_memory.SharedMemory(create=True, size=16, mode=0o200)
    assert mshare.list() == []
    untracked = shared_memory.SharedMemory(create=True, size=16, mode=0o200, track=False)
    untracked.close()
    untracked.unlink()


def test_mode_on_attach_is_refused(block):
    with pytest.raises(ValueError, match="mode= applies when creating"):
        shared_memory.SharedMemory(block.name, mode=0o644)


def test_errors_where_the_stdlib_raises_them(block):
    with pytest.raises(FileExistsError):
        shared_memory.SharedMemory(block.name, create=True, size=16)
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory("psm_not_there")
    block.unlink()
    with pytest.raises(FileNotFoundError):
        block.unlink()


def test_mode_and_backend_pass_through(registry_path, name):
    created = shared_memory.SharedMemory(name, create=True, size=1 << 20, mode=0o640,
                                         hugepages="off")
    try:
        assert mshare.info(name).mode == 0o640
        assert created.region.backend == "shm"
    finally:
        created.close()
        created.unlink()


def test_readonly_attach_maps_read_only_and_pickles_read_only(block):
    reader = shared_memory.SharedMemory(block.name, readonly=True)
    try:
        assert reader.buf.readonly
        with pytest.raises(TypeError):
            reader.buf[0] = 1
        again = pickle.loads(pickle.dumps(reader))
        assert again.buf.readonly
        again.close()
    finally:
        reader.close()


def test_repr_names_the_block_and_its_size(block):
    assert repr(block) == f"SharedMemory({block.name!r}, size=4096)"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_unpickling_attaches_the_same_memory_at_the_same_address(block, protocol):
    block.buf[:6] = b"pickle"
    copy = pickle.loads(pickle.dumps(block, protocol=protocol))
    try:
        assert isinstance(copy, shared_memory.SharedMemory)
        assert (copy.name, copy.addr, bytes(copy.buf[:6])) == (block.name, block.addr, b"pickle")
        copy.buf[:6] = b"newval"
        assert bytes(block.buf[:6]) == b"newval"
    finally:
        copy.close()


def test_unpickling_a_dead_name_raises_file_not_found(registry_path):
    created = shared_memory.SharedMemory(create=True, size=16)
    pickled = pickle.dumps(created)
    created.close()
    created.unlink()
    with pytest.raises(FileNotFoundError):
        pickle.loads(pickled)


def test_close_is_idempotent_and_drops_buf(block):
    block.close()
    block.close()
    assert block.buf is None
    assert block.region is None


def test_close_with_a_live_view_refuses_and_says_what_to_release(block):
    view = numpy.frombuffer(block.buf, dtype=numpy.uint8)
    with pytest.raises(BufferError, match="still alive; delete them"):
        block.close()
    view[0] = 7
    assert block.buf[0] == 7
    del view
    block.close()
    assert block.buf is None


def _open_descriptors():
    return set(os.listdir("/proc/self/fd"))


def _mapped_at(addr):
    with open("/proc/self/maps") as maps:
        return any(int(line.split("-", 1)[0], 16) == addr for line in maps)


def test_dropping_a_block_under_a_live_view_unmaps_once_the_view_goes(registry_path):
    before = _open_descriptors()
    created = shared_memory.SharedMemory(create=True, size=1 << 16, track=False)
    name, addr = created.name, created.addr
    view = numpy.frombuffer(created.buf, dtype=numpy.uint8)
    del created
    view[0] = 1
    assert _mapped_at(addr)
    del view
    assert not _mapped_at(addr)
    assert _open_descriptors() == before
    mshare.unlink(name)


def test_a_view_alive_at_interpreter_exit_prints_nothing(registry_path):
    result = run_python("""
        import numpy
        from mshare import shared_memory
        block = shared_memory.SharedMemory(create=True, size=4096)
        view = numpy.frombuffer(block.buf, dtype=numpy.uint8)
        try:
            block.close()
        except BufferError:
            print("refused")
        block.unlink()
    """)
    assert result.stdout == "refused\n"
    assert result.stderr == ""
