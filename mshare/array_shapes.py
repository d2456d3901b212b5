"""Checks of the shapes and dtypes that named arrays and queue items may have."""

import math
import operator
import re
from typing import TYPE_CHECKING, Any, Final, Iterable, Tuple, Union

from mshare._shared import DTYPE_MAX_BYTES, MAX_DIMS

if TYPE_CHECKING:
    import numpy

# numpy indexes arrays with signed 64-bit integers.
INDEX_MAX: Final = (1 << 63) - 1

# Exactly the forms the .str of a storable dtype takes (byte order, kind, item size, and a
# datetime's unit with a multiplier of at least 1). A dtype read from a region, which
# another process may have written, is matched against it before numpy parses it: numpy's
# parser kills the process on some strings (a datetime unit divided by zero, "M8[s/0]",
# raises SIGFPE) and hands others to ast.literal_eval.
STORED_DTYPE: Final = re.compile(
    r"[<>|][biufcSUV][0-9]{1,10}"
    r"|[<>|][mM]8(\[([1-9][0-9]{0,9})?(Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)\])?")


def _shape(shape: Union[int, Iterable[int]]) -> Tuple[int, ...]:
    try:
        dims = (operator.index(shape),)
    except TypeError:
        dims = tuple(shape)
    if len(dims) > MAX_DIMS:
        raise ValueError(f"a named array has at most {MAX_DIMS} dimensions, not {len(dims)}")
    if any(isinstance(extent, bool) for extent in dims):
        raise TypeError(f"shape sizes must be ints, not {shape!r}")
    dims = tuple(operator.index(extent) for extent in dims)
    if any(extent < 0 for extent in dims):
        raise ValueError(f"shape sizes must be >= 0, not {shape!r}")
    return dims


def _array_bytes(shape: Tuple[int, ...], dtype: "numpy.dtype[Any]") -> int:
    """Bytes of an array of ``shape`` and ``dtype``; ValueError where numpy could not index
    it: every extent and the element count, zeros aside, must fit a signed 64-bit index."""
    elements = math.prod(max(extent, 1) for extent in shape)
    if elements * dtype.itemsize > INDEX_MAX:
        raise ValueError(f"an array of shape {shape} and dtype {dtype} would span more than "
                         f"2**63 - 1 bytes")
    return math.prod(shape) * dtype.itemsize


def _check_storable(dtype: "numpy.dtype[Any]") -> None:
    import numpy

    if dtype.itemsize == 0:
        raise ValueError(f"dtype {dtype} has no bytes: a named array needs an itemsize >= 1")
    if dtype.hasobject:
        raise TypeError("arrays of Python objects cannot be shared: they hold pointers into "
                        "one process's heap")
    if (len(dtype.str) > DTYPE_MAX_BYTES or not STORED_DTYPE.fullmatch(dtype.str)
            or numpy.dtype(dtype.str) != dtype):
        raise TypeError(f"dtype {dtype} cannot be a named array: only dtypes described by "
                        f"their .str (numbers, bytes, strings, datetimes) can")


def stored_dtype(text: str) -> "numpy.dtype[Any]":
    """The dtype a region records as ``text``: ``ValueError`` unless ``text`` is a form
    the ``.str`` of a storable dtype takes (``STORED_DTYPE``)."""
    import numpy

    if not STORED_DTYPE.fullmatch(text):
        raise ValueError(f"{text!r} is not the .str of a dtype mshare stores")
    return numpy.dtype(text)
