"""Dtype strings and type codes a writer of a region plants for another process to parse.

numpy's dtype parser is not safe on untrusted text: a datetime unit divided by zero
(``M8[s/0]``) kills the process with SIGFPE, and a comma hands the string to
``ast.literal_eval`` (``SyntaxError``). A named array's slot and a queue item's header
record their dtype as text in the region; each gets every such string here, and a victim
in another process that reads them must see ``CorruptBookkeepingError``, never a signal or
another exception. The same for a ``ShareableList`` item whose type code does not fit its
format.
"""

import ctypes
import json

import numpy
import pytest

import mshare
from mshare.array_shapes import STORED_DTYPE
from mshare.shared_memory import ShareableList

from helpers import run_python

# The dtype the victim's objects are made with: its .str is found in the mapping, once in
# the array's name slot and once in the queue item's header, and overwritten.
MARKER = numpy.dtype("m8[7s]")
POISONS = [
    "M8[s/0]",      # SIGFPE inside numpy.dtype()
    "m8[1M/0]",     # the same, another unit
    ",V1V8",        # SyntaxError from ast.literal_eval
    "<i8,<f8",      # a structured dtype, parsed the same way
    "m8[0s]",       # a zero multiplier: numpy accepts it, later calls overflow
    "|O",           # Python objects: pointers into one process's heap
    "<f8\x01",      # a control character after a valid dtype
]

VICTIM = """
import json, sys
import mshare
outcomes = []
for name in sys.argv[1:]:
    region = mshare.attach(name)
    found = {}
    try:
        region.array("planted-array")
        found["array"] = "no error"
    except Exception as error:
        found["array"] = type(error).__name__
    queue = region.queue("planted-queue")
    try:
        with queue.get(timeout=5):
            found["queue"] = "no error"
    except Exception as error:
        found["queue"] = type(error).__name__
    del queue
    region.close()
    outcomes.append(found)
print(json.dumps(outcomes))
"""


def plant(region, poison):
    """Overwrite every copy of the marker's .str in the region's mapping with ``poison``;
    how many copies there were."""
    entry = region._attachment.entry
    mapping = ctypes.string_at(region.addr, entry.map_length)
    marker = MARKER.str.encode() + b"\0"
    replacement = poison.encode().ljust(len(marker), b"\0")
    assert len(replacement) <= 31
    copies, start = 0, mapping.find(marker)
    while start != -1:
        ctypes.memmove(region.addr + start, replacement + b"\0", len(replacement) + 1)
        copies += 1
        start = mapping.find(marker, start + 1)
    return copies


def test_a_victim_reading_planted_dtypes_gets_corrupt_bookkeeping_errors(registry_path):
    names = [f"planted-{index}" for index in range(len(POISONS))]
    regions = []
    try:
        for name, poison in zip(names, POISONS):
            region = mshare.create(name, 1 << 20, mode=0o600, hugepages="off")
            regions.append(region)
            region.array("planted-array", (4,), MARKER)
            queue = region.queue("planted-queue", 2, 4096)
            queue.put(numpy.zeros(4, MARKER))
            del queue
            assert plant(region, poison) == 2, poison
        result = run_python(f"import sys; sys.argv[1:] = {names!r}\n" + VICTIM, check=False,
                            timeout=120)
        assert result.returncode == 0, f"victim exited {result.returncode}:\n{result.stderr}"
        outcomes = json.loads(result.stdout.strip().splitlines()[-1])
        expected = {"array": "CorruptBookkeepingError", "queue": "CorruptBookkeepingError"}
        assert dict(zip(POISONS, outcomes)) == {poison: expected for poison in POISONS}
    finally:
        for region, name in zip(regions, names):
            region.close()
            mshare.unlink(name)


@pytest.mark.parametrize("code", [1, 2])
def test_a_type_code_that_does_not_fit_its_item_is_a_clear_error(registry_path, code):
    """A str or bytes type code planted over an int or float item: ``ValueError`` naming
    the damage, not an ``AttributeError`` from inside the conversion."""
    items = ShareableList([1, 2.5, "hello"], hugepages="off")
    try:
        codes = items._offset_back_transform_codes
        items.shm.buf[codes] = code
        items.shm.buf[codes + 1] = code
        result = run_python(f"""
            from mshare.shared_memory import ShareableList
            items = ShareableList(name={items.shm.name!r})
            for position in range(3):
                try:
                    print(position, repr(items[position]))
                except ValueError as error:
                    print(position, "ValueError", error)
            items.shm.close()
        """)
        lines = result.stdout.splitlines()
        assert lines[0].startswith("0 ValueError") and "damaged type code" in lines[0]
        assert lines[1].startswith("1 ValueError") and "damaged type code" in lines[1]
        assert lines[2] == "2 'hello'"
    finally:
        items.shm.close()
        items.shm.unlink()


def every_dtype_numpy_describes_by_its_str():
    """Scalar types, sizes, byte orders and datetime units with multipliers: each dtype
    whose .str gives it back, that holds no Python objects and has bytes."""
    texts = {numpy.dtype(kind).str for kind in set(numpy.sctypeDict.values())}
    texts |= {f"{kind}{size}" for kind in "SUV" for size in (1, 7, 4096)}
    texts |= {f"{kind}8[{multiple}{unit}]" for kind in "mM" for multiple in ("", 1, 25)
              for unit in "Y M W D h m s ms us ns ps fs as".split()}
    texts |= {"M8", "m8"}
    for text in sorted(texts):
        for order in "<>|=":
            try:
                dtype = numpy.dtype(order + text.lstrip("<>|="))
            except TypeError:
                continue
            if (dtype.itemsize and not dtype.hasobject
                    and numpy.dtype(dtype.str) == dtype):
                yield dtype


def test_every_dtype_a_region_can_store_matches_the_stored_form():
    dtypes = list(every_dtype_numpy_describes_by_its_str())
    assert len(dtypes) > 100
    assert [dtype.str for dtype in dtypes if not STORED_DTYPE.fullmatch(dtype.str)] == []
