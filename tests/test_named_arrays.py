"""region.array()/names()/delete(), and pointer structures built with alloc()."""

import ctypes
import multiprocessing
import os

import numpy
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import mshare

from helpers import run_python


def data_address(array):
    return array.__array_interface__["data"][0]


def _find_and_write(region, name):
    # Runs in a pool worker that received the Region by pickle (spawn) or by fork.
    with region:
        found = region.array(name)
        address, total = data_address(found), int(found.sum())
        found[0, 0] = -1
        del found
        return address, total, os.getpid()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_array_found_in_another_process_at_the_same_address(registry_path, name, method):
    region = mshare.create(name, 1 << 20)
    grid = region.array("grid", (16, 16), "int32")
    grid[:] = numpy.arange(256).reshape(16, 16)
    with multiprocessing.get_context(method).Pool(1) as pool:
        address, total, pid = pool.apply(_find_and_write, (region, "grid"))
    assert pid != os.getpid()
    assert address == data_address(grid)
    assert region.addr <= address < region.addr + region.size
    assert total == sum(range(256))
    assert grid[0, 0] == -1  # the child's write, seen without any copy
    del grid
    region.close()
    mshare.unlink(name)


def test_array_created_by_an_independent_interpreter(registry_path, name):
    region = mshare.create(name, 1 << 20)
    result = run_python(f"""
        import mshare
        region = mshare.attach({name!r})
        weights = region.array("weights", (3, 4), "float32")
        weights[:] = 1.5
        print(weights.__array_interface__["data"][0])
        del weights
        region.close()
    """)
    weights = region.array("weights", dtype="float32")
    assert data_address(weights) == int(result.stdout)
    assert weights.shape == (3, 4) and weights.dtype == numpy.float32
    assert weights.flags.writeable and (weights == 1.5).all()
    assert region.names() == ["weights"]
    del weights
    region.close()
    mshare.unlink(name)


def test_created_arrays_are_zeroed_and_aligned(registry_path, name):
    with mshare.create(name, 1 << 20) as region:
        views = [region.array(f"a{i}", (i + 1,), dtype)
                 for i, dtype in enumerate(["u1", "<f8", "complex128", "S7", "<M8[ns]"])]
        for view in views:
            assert data_address(view) % 64 == 0
            assert not view.view(numpy.uint8).any()
        assert region.array("empty", (0, 5), "f4").shape == (0, 5)
        assert region.names() == ["a0", "a1", "a2", "a3", "a4", "empty"]
        del views, view
    mshare.unlink(name)


def test_names_and_shapes_errors_are_clear(registry_path, name):
    region = mshare.create(name, 1 << 20)
    region.array("x", (4, 2), "int16")
    with pytest.raises(FileNotFoundError, match="no array named 'missing'"):
        region.array("missing")
    with pytest.raises(FileExistsError):
        region.array("x", (4, 2), "int16")
    assert region.array("x", (4, 2), "int16", exist_ok=True).shape == (4, 2)
    with pytest.raises(ValueError, match="has shape"):
        region.array("x", (8,), "int16", exist_ok=True)
    with pytest.raises(ValueError, match="has dtype"):
        region.array("x", dtype="float64")
    for bad_name, error in [("", ValueError), ("n" * 64, ValueError), ("a\0b", ValueError),
                            (b"x", TypeError), (7, TypeError)]:
        with pytest.raises(error):
            region.array(bad_name, (1,))
    for shape, error in [((-1,), ValueError), ((1,) * 9, ValueError), ((1.5,), TypeError),
                         ((True,), TypeError)]:
        with pytest.raises(error):
            region.array("y", shape)
    for dtype in [object, [("a", "i4"), ("b", "f8")], ("i4", (2,))]:
        with pytest.raises(TypeError):
            region.array("y", (2,), dtype)
    with pytest.raises(mshare.RegionFullError):
        region.array("huge", (1 << 40,), "u1")
    assert region.names() == ["x"]
    with pytest.raises(FileNotFoundError):
        region.delete("y")
    region.delete("x")
    with pytest.raises(FileNotFoundError):
        region.array("x")
    region._bookkeeping.verify()
    region.close()
    mshare.unlink(name)


def test_name_table_capacity_is_enforced_and_reusable(registry_path, name):
    from mshare._shared import NAME_CAPACITY

    with mshare.create(name, 1 << 20) as region:
        for i in range(NAME_CAPACITY):
            region.array(f"n{i}", (1,), "u1")
        with pytest.raises(mshare.RegionFullError, match="name table is full"):
            region.array("one-too-many", (1,), "u1")
        region.delete("n7")
        region.array("one-too-many", (1,), "u1")
        assert len(region.names()) == NAME_CAPACITY
        assert region._bookkeeping.verify()["names"] == NAME_CAPACITY
    mshare.unlink(name)


def test_readonly_attachers_find_arrays_but_change_nothing(registry_path, name):
    region = mshare.create(name, 1 << 20)
    region.array("table", (5,), "int64")[:] = 42
    with mshare.attach(name, readonly=True) as reader:
        table = reader.array("table")
        assert (table == 42).all() and not table.flags.writeable
        assert reader.names() == ["table"]
        for change in (lambda: reader.array("new", (1,)), lambda: reader.delete("table")):
            with pytest.raises(PermissionError):
                change()
        del table
    region.close()
    mshare.unlink(name)


def test_close_refuses_while_a_named_array_is_alive(registry_path, name):
    region = mshare.create(name, 1 << 20)
    values = region.array("values", (8,), "f8")
    with pytest.raises(BufferError):
        region.close()
    del values
    region.close()
    with pytest.raises(ValueError, match="closed"):
        region.names()
    mshare.unlink(name)


class Node(ctypes.Structure):
    pass


Node._fields_ = [("key", ctypes.c_int64), ("left", ctypes.POINTER(Node)),
                 ("right", ctypes.POINTER(Node))]

TREE_BUILDER = """
    import ctypes, random, mshare

    class Node(ctypes.Structure):
        pass
    Node._fields_ = [("key", ctypes.c_int64), ("left", ctypes.POINTER(Node)),
                     ("right", ctypes.POINTER(Node))]

    region = mshare.attach({name!r})
    root = region.array("root", (1,), "uint64")
    keys = random.Random(5).sample(range(100_000), 500)
    for key in keys:
        node = Node.from_address(region.alloc(ctypes.sizeof(Node)))
        node.key = key
        link = root[0]
        if not link:
            root[0] = ctypes.addressof(node)
            continue
        parent = Node.from_address(int(link))
        while True:  # raw pointers, valid as they are in every process
            side = "left" if key < parent.key else "right"
            child = getattr(parent, side)
            if not child:
                setattr(parent, side, ctypes.pointer(node))
                break
            parent = child.contents
    print(" ".join(map(str, keys)))
    del root
    region.close()
"""


def test_pointer_tree_built_in_one_process_is_walked_in_another(registry_path, name):
    region = mshare.create(name, 1 << 20)
    built = run_python(TREE_BUILDER.format(name=name))
    keys = [int(key) for key in built.stdout.split()]
    root = region.array("root")

    def in_order(pointer):
        while pointer:
            node = pointer.contents
            assert region.addr <= ctypes.addressof(node) < region.addr + region.size
            yield from in_order(node.left)
            yield node.key
            pointer = node.right

    walked = list(in_order(ctypes.cast(int(root[0]), ctypes.POINTER(Node))))
    assert walked == sorted(keys)
    assert region._bookkeeping.verify()["used_blocks"] == len(keys) + 1
    del root
    region.close()
    mshare.unlink(name)


# Arguments of array() and alloc(), most of them bad: too many dimensions, negative,
# non-integer and overflowing extents (2**63 and up overflow numpy's index, 2**64 the
# region's words), dtypes with no bytes or with pointers, names that are no names.
EXTENTS = st.one_of(st.integers(-3, 70), st.sampled_from([2**31, 2**62, 2**63 - 1, 2**63,
                                                          2**64 - 1, 2**64, 2**70]),
                    st.just(True), st.floats(allow_nan=True), st.text(max_size=2))
SHAPES = st.one_of(EXTENTS, st.lists(EXTENTS, max_size=10).map(tuple))
DTYPES = st.sampled_from([None, "int8", "<f8", "V0", "S0", "U0", "V8", "O", object,
                          "i4,i4", "(2,)i4", "M8[ns]", "no such dtype", 3.5])
NAMES = st.one_of(st.sampled_from(["existing", "fresh", "", "n" * 63, "n" * 64, "a\0b",
                                   "\udcff"]),
                  st.text(max_size=70), st.binary(max_size=4), st.integers(), st.none())
REFUSALS = (ValueError, TypeError, FileExistsError, mshare.RegionFullError)


@pytest.fixture
def probed_region(registry_path, name):
    region = mshare.create(name, 1 << 20)
    region.array("existing", (3,), "int32")
    yield region
    for array_name in region.names():
        region.delete(array_name)
    region.close()
    mshare.unlink(name)


def table_and_free_bytes(region):
    return region.names(), region._bookkeeping.verify()["free_bytes"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES, shape=SHAPES, dtype=DTYPES, exist_ok=st.one_of(st.booleans(), st.just(1)))
@example(name="fresh", shape=(0, 2**63), dtype="int8", exist_ok=False)
@example(name="fresh", shape=(2**64,), dtype="int8", exist_ok=False)
@example(name="fresh", shape=(2**62, 4), dtype="int8", exist_ok=False)
@example(name="fresh", shape=(4,), dtype="V0", exist_ok=False)
def test_bad_array_arguments_change_nothing(probed_region, name, shape, dtype, exist_ok):
    region = probed_region
    before = table_and_free_bytes(region)
    try:
        array = region.array(name, shape, dtype, exist_ok=exist_ok)
    except REFUSALS:
        assert table_and_free_bytes(region) == before
        return
    # Accepted: a real array of that shape inside the region, which deleting undoes.
    assert region.addr <= data_address(array) and data_address(array) + array.nbytes <= (
        region.addr + region.size)
    del array
    if name != "existing":
        region.delete(name)
    assert table_and_free_bytes(region) == before


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(nbytes=2**64, align=64)
@given(nbytes=st.one_of(EXTENTS, st.integers(2**20, 2**66)),
       align=st.one_of(st.integers(-2, 2**31), st.sampled_from([2**30, 2**31, 2**64]),
                       st.just(True), st.floats()))
def test_bad_alloc_arguments_change_nothing(probed_region, nbytes, align):
    region = probed_region
    before = table_and_free_bytes(region)
    try:
        addr = region.alloc(nbytes, align)
    except REFUSALS:
        assert table_and_free_bytes(region) == before
        return
    assert addr % align == 0 and region.addr <= addr and addr + nbytes <= region.addr + region.size
    region.free(addr)
    assert table_and_free_bytes(region) == before


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(shape=None, dtype="V0", offset=0)
@example(shape=(-1,), dtype="int8", offset=0)
@example(shape=(2**63, 0), dtype="int8", offset=0)
@given(shape=st.one_of(st.none(), SHAPES), dtype=DTYPES,
       offset=st.one_of(st.integers(-2, (1 << 20) + 2), st.just(True), st.floats()))
def test_bad_ndarray_arguments_are_refused_or_stay_inside(probed_region, shape, dtype, offset):
    region = probed_region
    before = table_and_free_bytes(region)
    try:
        array = region.ndarray(dtype, shape, offset)
    except (ValueError, TypeError):
        assert table_and_free_bytes(region) == before
        return
    # Accepted: a view of exactly the bytes it names, all inside the region.
    start = data_address(array)
    assert start == region.addr + offset
    assert region.addr <= start and start + array.nbytes <= region.addr + region.size
    del array
    assert table_and_free_bytes(region) == before
