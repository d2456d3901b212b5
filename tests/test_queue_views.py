"""The arrays a queue lends: views of the slot with the item's dtype and shape, which keep
the region open while they live and, kept past their block, show whatever the slot holds
next."""

import numpy
import pytest

import mshare


@pytest.fixture
def region(registry_path, name):
    """A region for one test's queue; a test lets its arrays go before it ends."""
    made = mshare.create(name, 1 << 20)
    yield made
    made.close()
    mshare.unlink(name)


def test_a_lent_array_keeps_the_region_from_closing_until_it_goes(region):
    items = region.queue("items", 2, 4096)
    with items.reserve((4,), "int32") as written:
        written[:] = 7
    with pytest.raises(BufferError):
        region.close()  # unmapping under the reserve's array would crash this process
    del written
    with items.get() as read:
        assert (read == 7).all()
    with pytest.raises(BufferError):
        region.close()
    assert not region.closed
    del read
    region.close()  # both gone: nothing holds the memory now
    assert region.closed


def test_an_array_kept_past_its_block_shows_the_next_item_in_its_slot(region):
    items = region.queue("items", 1, 64)
    items.put(numpy.full(8, 1, "uint8"))
    with items.get() as kept:
        assert (kept == 1).all()
    items.put(numpy.full(8, 2, "uint8"))  # the one slot again, now holding another item
    assert (kept == 2).all()  # the same memory: a kept view is no copy of its item
    assert not kept.flags.writeable
    with items.get() as fresh:
        assert fresh.ctypes.data == kept.ctypes.data and fresh is not kept
    del kept, fresh


@pytest.mark.parametrize("shape, dtype", [
    ((), "float64"), ((0,), "int8"), ((2, 0, 3), "uint16"), ((1,) * 7 + (3,), "<c8"),
    ((3, 5), ">i4"), ((4,), "S3"), ((2,), "M8[ms]"),
])
def test_items_of_every_rank_and_kind_come_back_as_they_went_in(region, shape, dtype):
    items = region.queue("items", 2, 4096)
    original = numpy.arange(int(numpy.prod(shape)), dtype="int64").astype(dtype).reshape(shape)
    with items.reserve(shape, dtype) as written:
        assert written.flags.writeable and written.flags.c_contiguous
        written[...] = original
    items.put(original)
    for _ in range(2):  # the reserve's item, then the put's
        with items.get() as read:
            assert read.dtype == original.dtype and read.shape == original.shape
            assert read.flags.c_contiguous and not read.flags.writeable
            assert read.tobytes() == original.tobytes()
    del written, read


def test_items_of_alternating_kinds_are_each_read_as_their_own(region):
    items = region.queue("items", 8, 4096)
    # Of one byte count, so only their recorded dtype and shape tell them apart.
    kinds = [numpy.arange(12, dtype="int16").reshape(3, 4), numpy.ones(6, "float32"),
             numpy.arange(12, dtype="int16").reshape(4, 3)]
    for round_ in range(2):
        for item in kinds:
            items.put(item + round_)
        for item in kinds:
            with items.get() as read:
                assert read.dtype == item.dtype and read.shape == item.shape
                assert (read == item + round_).all()
    del read
