"""Fixed addresses: allocation, requested addresses, conflicts, separate registries."""

import os
import uuid

import pytest

import mshare
from mshare.addresses import ALIGNMENT, address_bits, arena
from mshare.procmaps import stack_top

from helpers import run_python


def test_arena_fits_this_machines_address_space():
    start, end = arena()
    assert address_bits() == (stack_top() - 1).bit_length()
    assert start % ALIGNMENT == 0 and end <= 1 << address_bits()
    assert stack_top() > end  # the stack (and mmap area beneath it) lie above the arena


def test_regions_get_disjoint_aligned_ranges(registry_path):
    names = [f"r{i}" for i in range(3)]
    regions = [mshare.create(n, (i + 1) * ALIGNMENT + 1) for i, n in enumerate(names)]
    spans = sorted((r.addr, r.addr + r.size) for r in regions)
    assert all(addr % ALIGNMENT == 0 for addr, _ in spans)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
    for region, n in zip(regions, names):
        region.close()
        mshare.unlink(n)


def test_requested_address_is_honoured_everywhere(registry_path, name):
    wanted = arena()[0] + 7 * ALIGNMENT
    with mshare.create(name, 4096, addr=wanted) as region:
        assert region.addr == wanted
        child = run_python(f"import mshare; print(mshare.attach({name!r}).addr)")
        assert int(child.stdout) == wanted
    mshare.unlink(name)


def test_requested_address_overlapping_a_live_region_conflicts(registry_path, name):
    with mshare.create(name, 2 * ALIGNMENT) as region:
        with pytest.raises(mshare.AddressConflictError, match="overlaps"):
            mshare.create("second", 64, addr=region.addr + ALIGNMENT)
        assert [info.name for info in mshare.list()] == [name]
    mshare.unlink(name)


def test_range_of_region_unlinked_but_mapped_elsewhere_stays_reserved(registry_path, name):
    region = mshare.create(name, 64)
    mshare.unlink(name)
    # Another process (which does not map it) must not be given the same range.
    child = run_python(f"""
        import mshare
        with mshare.create({name!r}, 64) as region:
            print(region.addr)
    """)
    assert int(child.stdout) != region.addr
    region.close()
    mshare.unlink(name)


def test_second_registry_skips_ranges_this_process_maps(registry_path, monkeypatch, name):
    first = mshare.create(name, 64)
    other_root = os.path.join(os.path.dirname(registry_path), uuid.uuid4().hex)
    monkeypatch.setenv("MSHARE_ROOT", other_root)
    try:
        with pytest.raises(mshare.AddressConflictError, match="in use|overlaps"):
            mshare.create(name, 64, addr=first.addr)
        with mshare.create(name, 64) as second:
            assert second.addr != first.addr
        mshare.unlink(name)
    finally:
        import shutil

        shutil.rmtree(other_root)
        monkeypatch.setenv("MSHARE_ROOT", registry_path)
    first.close()
    mshare.unlink(name)


def test_registries_never_share_data_objects(registry_path, name):
    other_root = os.path.join(os.path.dirname(registry_path), uuid.uuid4().hex)
    with mshare.create(name, 64) as mine:
        mine.buf[:4] = b"mine"
        theirs = run_python(f"""
            import mshare
            with mshare.create({name!r}, 64) as region:
                print(bytes(region.buf[:4]))
            mshare.unlink({name!r})
        """, env={**os.environ, "MSHARE_ROOT": other_root})
        assert theirs.stdout.strip() == repr(bytes(4))
        assert bytes(mine.buf[:4]) == b"mine"
    mshare.unlink(name)
    import shutil

    shutil.rmtree(other_root)
