"""mshare.shared_memory.ShareableList: the stdlib's bytes, formats, errors and pickling,
in pools started by fork and spawn, and refusal of a damaged block."""

import multiprocessing
import pickle
import struct
from multiprocessing import shared_memory as stdlib_shared_memory

import pytest

import mshare
from mshare import shared_memory

MIXED = ["howdy", b"HoWdY", -273.154, 100, None, True, 42, "encod\u00e9s", b""]


@pytest.fixture
def numbers(registry_path):
    created = shared_memory.ShareableList(range(10))
    yield created
    created.shm.close()
    created.shm.unlink()


@pytest.mark.parametrize("sequence", [MIXED, [], list(range(400)), ["x" * 17, 1.5]])
def test_the_block_holds_the_stdlib_layout_byte_for_byte(registry_path, sequence):
    ours = shared_memory.ShareableList(sequence)
    theirs = stdlib_shared_memory.ShareableList(sequence)
    try:
        assert ours.format == theirs.format
        assert list(ours) == list(theirs) == sequence
        assert bytes(ours.shm.buf) == bytes(theirs.shm.buf)[:ours.shm.size]
    finally:
        for made in (ours, theirs):
            made.shm.close()
            made.shm.unlink()


def test_assignments_keep_the_stdlib_layout(registry_path):
    ours = shared_memory.ShareableList(MIXED)
    theirs = stdlib_shared_memory.ShareableList(MIXED)
    try:
        for position, value in [(3, 42), (4, "some"), (0, "encod\u00e9s"), (2, None), (5, 1.25),
                                (-1, b"1234567")]:
            ours[position] = value
            theirs[position] = value
        assert list(ours) == list(theirs)
        assert ours.format == theirs.format
        assert bytes(ours.shm.buf) == bytes(theirs.shm.buf)[:ours.shm.size]
    finally:
        for made in (ours, theirs):
            made.shm.close()
            made.shm.unlink()


@pytest.mark.parametrize("operation, error", [
    (lambda made: made[len(MIXED)], IndexError),
    (lambda made: made.__setitem__(len(MIXED), 1), IndexError),
    (lambda made: made.__setitem__(4, "far too many"), ValueError),
    (lambda made: made.__setitem__(0, "encod\u00e9es"), ValueError),
    (lambda made: made.__setitem__(3, [1]), KeyError),
    (lambda made: made.index("absent"), ValueError),
])
def test_errors_are_the_stdlib_ones(registry_path, operation, error):
    ours = shared_memory.ShareableList(MIXED)
    theirs = stdlib_shared_memory.ShareableList(MIXED)
    try:
        for made in (ours, theirs):
            with pytest.raises(error):
                operation(made)
        assert list(ours) == list(theirs) == MIXED
    finally:
        for made in (ours, theirs):
            made.shm.close()
            made.shm.unlink()


def test_an_unsupported_item_type_raises_and_leaves_nothing(registry_path):
    with pytest.raises(KeyError):
        shared_memory.ShareableList([1, {"no": "dicts"}])
    assert mshare.list() == []


def test_repr_count_index_and_len(numbers):
    assert repr(numbers) == f"ShareableList({list(range(10))}, name={numbers.shm.name!r})"
    assert (len(numbers), numbers.count(3), numbers.index(7)) == (10, 1, 7)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_carries_the_name_only_and_attaches(numbers, protocol):
    copy = pickle.loads(pickle.dumps(numbers, protocol=protocol))
    try:
        assert copy is not numbers and copy.shm.name == numbers.shm.name
        copy[4] = "changed"
        assert numbers[4] == "changed"
    finally:
        copy.shm.close()


def test_unpickling_a_dead_list_raises_file_not_found(registry_path):
    created = shared_memory.ShareableList(range(3))
    pickled = pickle.dumps(created)
    created.shm.close()
    created.shm.unlink()
    with pytest.raises(FileNotFoundError):
        pickle.loads(pickled)


def _store_square(shareable, position):
    shareable[position] = position * position
    value = shareable[position]
    shareable.shm.close()
    return value


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_write_through_unpickled_lists(numbers, method):
    with multiprocessing.get_context(method).Pool(2) as pool:
        # One task per pickle, so that each worker task attaches (and closes) a list of its own.
        returned = pool.starmap(_store_square, [(numbers, position) for position in range(10)],
                                chunksize=1)
    assert returned == list(numbers) == [position * position for position in range(10)]


def test_a_count_too_large_for_the_block_is_refused_on_attach(numbers):
    struct.pack_into("q", numbers.shm.buf, 0, 1 << 40)
    with pytest.raises(ValueError, match="item count"):
        shared_memory.ShareableList(name=numbers.shm.name)


def test_offsets_past_the_end_are_refused_on_attach(numbers):
    struct.pack_into("q", numbers.shm.buf, 8 * 11, 1 << 20)
    with pytest.raises(ValueError, match="offsets"):
        shared_memory.ShareableList(name=numbers.shm.name)


def test_a_damaged_format_is_refused_not_followed(numbers):
    formats_start = numbers._offset_packing_formats
    struct.pack_into("8s", numbers.shm.buf, formats_start + 2 * 8, b"4096s")
    with pytest.raises(ValueError, match="damaged format"):
        numbers[2]
    assert numbers[3] == 3
