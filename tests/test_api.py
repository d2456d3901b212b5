"""The public API within one process: sizes, buffers, sharing of mappings, lifetime."""

import os
import stat

import numpy
import pytest

import mshare
from mshare.registry import Registry

from helpers import shm_objects_of


def test_create_gives_exact_size_and_zeroed_writable_buffer(registry_path, name):
    with mshare.create(name, 1000) as region:
        assert region.name == name
        assert region.size == 1000
        assert region.buf.nbytes == 1000 and region.buf.format == "B"
        assert not region.buf.readonly and not region.readonly
        assert bytes(region.buf) == bytes(1000)
        assert region.addr % (1 << 30) == 0
        assert region.backend == "shm" and region.page_size == os.sysconf("SC_PAGESIZE")
        assert region.mode == 0o600
        region.buf[-4:] = b"tail"
    mshare.unlink(name)


def test_attach_in_same_process_shares_one_mapping(registry_path, name):
    created = mshare.create(name, 4096)
    attached = mshare.attach(name)
    assert attached.addr == created.addr
    created.buf[:3] = b"abc"
    assert bytes(attached.buf[:3]) == b"abc"
    created.close()
    # The mapping stays while another Region uses it.
    attached.buf[3:6] = b"def"
    assert bytes(attached.buf[:6]) == b"abcdef"
    attached.close()
    mshare.unlink(name)


def test_readonly_region_over_writable_mapping_has_readonly_buffer(registry_path, name):
    writer = mshare.create(name, 64)
    reader = mshare.attach(name, readonly=True)
    assert reader.readonly and reader.buf.readonly
    with pytest.raises(TypeError):
        reader.buf[0] = 1
    writer.buf[0] = 7
    assert reader.buf[0] == 7
    reader.close()
    writer.close()
    mshare.unlink(name)


def test_writable_attach_upgrades_a_readonly_mapping(registry_path, name):
    mshare.create(name, 64).close()
    reader = mshare.attach(name, readonly=True)
    writer = mshare.attach(name)
    writer.buf[:2] = b"hi"
    assert bytes(reader.buf[:2]) == b"hi" and reader.addr == writer.addr
    reader.close()
    writer.close()
    mshare.unlink(name)


def test_close_is_idempotent_and_never_unlinks(registry_path, name):
    region = mshare.create(name, 64)
    with region:
        pass
    assert region.closed
    region.close()
    with pytest.raises(ValueError, match="closed"):
        region.buf
    again = mshare.attach(name)
    assert again.size == 64
    again.close()
    mshare.unlink(name)


def test_close_with_live_numpy_view_raises_buffer_error_and_keeps_memory(registry_path, name):
    region = mshare.create(name, 80)
    array = region.ndarray(numpy.float64)
    array[:] = 1.5
    with pytest.raises(BufferError, match="still alive"):
        region.close()
    assert not region.closed
    assert array.sum() == 15.0  # still mapped: no crash
    del array
    region.close()
    mshare.unlink(name)


def test_close_with_live_memoryview_slice_raises_buffer_error(registry_path, name):
    region = mshare.create(name, 80)
    piece = region.buf[8:16]
    with pytest.raises(BufferError, match="slice"):
        region.close()
    piece[0] = 3
    assert region.buf[8] == 3
    piece.release()
    region.close()
    mshare.unlink(name)


def test_ndarray_is_zero_copy_and_checks_bounds(registry_path, name):
    with mshare.create(name, 8 * 100) as region:
        whole = region.ndarray("float64")
        assert whole.shape == (100,) and whole.flags.writeable
        grid = region.ndarray(numpy.int32, shape=(10, 10), offset=400)
        grid[0, 0] = 42
        assert int.from_bytes(region.buf[400:404], "little") == 42
        assert whole.ctypes.data == region.addr
        with pytest.raises(ValueError, match="needs"):
            region.ndarray(numpy.float64, shape=(101,))
        with pytest.raises(ValueError, match="outside"):
            region.ndarray(numpy.uint8, offset=801)
        del whole, grid
    mshare.unlink(name)


def test_readonly_ndarray_is_not_writable(registry_path, name):
    mshare.create(name, 64).close()
    with mshare.attach(name, readonly=True) as reader:
        array = reader.ndarray(numpy.uint8)
        assert not array.flags.writeable
        del array
    mshare.unlink(name)


def test_populate_faults_pages_in(registry_path, name):
    size = 8 << 20
    # 4 KiB pages, which smaps counts in Rss (it counts hugetlb pages apart).
    with mshare.create(name, size, populate=True, hugepages="off") as region:
        resident = _resident_kib(region.addr)
        assert resident >= size // 1024
        with mshare.attach(name, populate=True) as again:
            assert again.addr == region.addr
    mshare.unlink(name)


def _resident_kib(addr):
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            if "-" in line.split()[0] and not line[0].isupper():
                inside = int(line.split("-")[0], 16) == addr
            elif inside and line.startswith("Rss:"):
                return int(line.split()[1])
    raise AssertionError(f"no mapping at {addr:#x}")


def test_info_and_list_describe_regions(registry_path):
    with mshare.create("b-region", 5000, mode=0o640) as b, mshare.create("a-region", 10):
        info = mshare.info("b-region")
        assert (info.name, info.addr, info.size, info.mode) == ("b-region", b.addr, 5000, 0o640)
        assert (info.uid, info.gid) == (os.geteuid(), os.getegid())
        assert info.backend == "shm" and info.page_size == b.page_size
        assert info.creator_pid == os.getpid() and info.attached == 1
        assert abs(info.created - __import__("time").time()) < 60
        names = [region.name for region in mshare.list()]
        assert names == ["a-region", "b-region"]
    for region_name in ("a-region", "b-region"):
        mshare.unlink(region_name)
    assert mshare.list() == []


def test_mode_is_exact_on_entry_and_data_object(registry_path, name):
    old_umask = os.umask(0o077)
    try:
        region = mshare.create(name, 64, mode=0o664)
    finally:
        os.umask(old_umask)
    entry_mode = stat.S_IMODE(os.stat(os.path.join(registry_path, name)).st_mode)
    with Registry(registry_path) as registry:
        (data_object,) = shm_objects_of(registry.registry_id)
    data_mode = stat.S_IMODE(os.stat(f"/dev/shm/{data_object}").st_mode)
    assert entry_mode == data_mode == 0o664
    region.close()
    mshare.unlink(name)


def test_unlink_keeps_mappings_and_name_can_be_reused(registry_path, name):
    old = mshare.create(name, 64)
    old.buf[:3] = b"old"
    mshare.unlink(name)
    with pytest.raises(FileNotFoundError):
        mshare.attach(name)
    assert bytes(old.buf[:3]) == b"old"
    new = mshare.create(name, 64)
    assert new.addr != old.addr  # the old range is still mapped here
    assert bytes(new.buf[:3]) == bytes(3)
    new.buf[:3] = b"new"
    assert bytes(old.buf[:3]) == b"old"
    old.close()
    new.close()
    mshare.unlink(name)


def test_range_of_unlinked_region_is_freed_by_last_close(registry_path, name):
    region = mshare.create(name, 64)
    addr = region.addr
    mshare.unlink(name)
    assert any(f.startswith(".range-") for f in os.listdir(registry_path))
    region.close()
    assert not any(f.startswith(".range-") for f in os.listdir(registry_path))
    with mshare.create(name, 64) as again:
        assert again.addr == addr
    mshare.unlink(name)


def test_dropped_region_releases_its_mapping(registry_path, name):
    region = mshare.create(name, 64)
    addr = region.addr
    del region
    import gc

    gc.collect()
    assert not any(r.start == addr for r in __import__("mshare.procmaps").procmaps.mapped_ranges())
    mshare.unlink(name)
