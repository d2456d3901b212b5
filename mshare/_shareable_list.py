"""The byte layout and item access of ``ShareableList``, the stdlib's format exactly.

A block holds, in 8-byte native-endian fields: the item count ``n``; ``n + 1`` offsets
of each item's slot from the data start; the slots; ``n`` 8-byte ``struct`` formats, one
per item; ``n`` one-byte codes saying how to turn the unpacked value back into an object.

Every process that can write the block can rewrite all of it. The count and the offsets
are read once, at attach, and checked against the block's size; each format and code is
checked against its slot before it is used, so a damaged block gives ``ValueError``,
never a read outside the slot.
"""

import struct
from typing import Any, Callable, ClassVar, Generic, Iterable, Optional, Protocol, TypeVar

_ENCODING = "utf8"
_ALIGNMENT = 8
_FIELD = struct.calcsize("q")
_TYPES_MAPPING = {
    int: "q",
    float: "d",
    bool: "xxxxxxx?",
    str: "%ds",
    bytes: "%ds",
    type(None): "xxxxxx?x",
}
_FIXED_FORMATS = frozenset(fmt for fmt in _TYPES_MAPPING.values() if not fmt.endswith("s"))
_BACK_TRANSFORMS = {
    0: lambda value: value,
    1: lambda value: value.rstrip(b"\x00").decode(_ENCODING),
    2: lambda value: value.rstrip(b"\x00"),
    3: lambda _value: None,
}
_BYTES_CODES = frozenset((1, 2))  # str and bytes: stored with an "Ns" format


class Block(Protocol):
    """What the layout needs of the block that holds it."""

    @property
    def buf(self) -> memoryview: ...
    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...


BlockType = TypeVar("BlockType", bound=Block)


def _recreation_code(value: object) -> int:
    if isinstance(value, str):
        return 1
    if isinstance(value, bytes):
        return 2
    if value is None:
        return 3
    return 0


def _format_of(item: object) -> str:
    # A KeyError for an unsupported type, as the stdlib raises.
    fmt = _TYPES_MAPPING[type(item)]
    if isinstance(item, (str, bytes)):
        return fmt % (_ALIGNMENT * (len(item) // _ALIGNMENT + 1),)
    return fmt


class ShareableListLayout(Generic[BlockType]):
    """``ShareableList`` minus the block type, which a subclass names in ``_block_class``."""

    _block_class: ClassVar[Callable[..., Any]]
    shm: BlockType

    def __init__(self, sequence: Optional[Iterable[Any]] = None, *, name: Optional[str] = None,
                 **block_options: Any) -> None:
        if name is None or sequence is not None:
            sequence = tuple(sequence or ())
            formats = [_format_of(item) for item in sequence]
            self._list_len = len(formats)
            offsets = [0]
            for fmt in formats:
                offsets.append(offsets[-1] + (_ALIGNMENT if fmt[-1] != "s" else int(fmt[:-1])))
            self._allocated_offsets = offsets
            size = struct.calcsize("q" + self._format_size_metainfo + "".join(formats)
                                   + self._format_packing_metainfo
                                   + self._format_back_transform_codes)
            self.shm = self._block_class(name, create=True, size=size, **block_options)
            self._write_all(sequence, formats)
        else:
            self.shm = self._block_class(name, **block_options)
            self._read_layout()

    def _write_all(self, sequence, formats):
        buf = self.shm.buf
        struct.pack_into("q" + self._format_size_metainfo, buf, 0, self._list_len,
                         *self._allocated_offsets)
        struct.pack_into("".join(formats), buf, self._offset_data_start,
                         *(item.encode(_ENCODING) if isinstance(item, str) else item
                           for item in sequence))
        struct.pack_into(self._format_packing_metainfo, buf, self._offset_packing_formats,
                         *(fmt.encode(_ENCODING) for fmt in formats))
        struct.pack_into(self._format_back_transform_codes, buf,
                         self._offset_back_transform_codes,
                         *(_recreation_code(item) for item in sequence))

    def _read_layout(self):
        """Read the count and offsets once and check them against the block's size."""
        buf = self.shm.buf
        size = self.shm.size
        if size < 2 * _FIELD:
            raise ValueError(f"block {self.shm.name!r} is too small to hold a ShareableList")
        (count,) = struct.unpack_from("q", buf, 0)
        # Each item needs an offset, an 8-byte slot, a format and a code: 25 bytes at least.
        if not 0 <= count <= (size - 2 * _FIELD) // (3 * _FIELD + 1):
            raise ValueError(f"block {self.shm.name!r} holds a damaged ShareableList: "
                             f"item count {count} does not fit its {size} bytes")
        offsets = list(struct.unpack_from("q" * (count + 1), buf, _FIELD))
        data_start = (count + 2) * _FIELD
        end_of_metadata = data_start + offsets[-1] + count * (_FIELD + 1)
        if offsets[0] != 0 or any(later - earlier < _ALIGNMENT
                                  for earlier, later in zip(offsets, offsets[1:])) \
                or end_of_metadata > size:
            raise ValueError(f"block {self.shm.name!r} holds a damaged ShareableList: "
                             "its item offsets are out of order or past its end")
        self._list_len = count
        self._allocated_offsets = offsets

    def _position(self, position):
        position = position if position >= 0 else position + self._list_len
        if not 0 <= position < self._list_len:
            raise IndexError("Requested position out of range.")
        return position

    def _slot_length(self, position):
        return self._allocated_offsets[position + 1] - self._allocated_offsets[position]

    def _get_packing_format(self, position):
        """The ``struct`` format of one item, checked to fit the item's slot."""
        position = self._position(position)
        (raw,) = struct.unpack_from("8s", self.shm.buf,
                                    self._offset_packing_formats + position * _FIELD)
        fmt = raw.rstrip(b"\x00").decode(_ENCODING, errors="replace")
        fits = fmt in _FIXED_FORMATS or (
            fmt[:-1].isdigit() and fmt[-1] == "s" and int(fmt[:-1]) <= self._slot_length(position)
        )
        if not fits:
            raise ValueError(f"item {position} of ShareableList {self.shm.name!r} has a "
                             f"damaged format {fmt!r}")
        return fmt

    def _get_back_transform(self, position, fmt):
        """How to turn the value unpacked with ``fmt`` back into the item: its type code,
        checked to be one that ``fmt`` can hold (a str or bytes code only over bytes)."""
        (code,) = struct.unpack_from("b", self.shm.buf,
                                     self._offset_back_transform_codes + position)
        if code not in _BACK_TRANSFORMS or (code in _BYTES_CODES) != fmt.endswith("s"):
            raise ValueError(f"item {position} of ShareableList {self.shm.name!r} has a "
                             f"damaged type code {code} for its format {fmt!r}")
        return _BACK_TRANSFORMS[code]

    def __getitem__(self, position: int) -> Any:
        try:
            position = self._position(position)
        except IndexError:
            raise IndexError("index out of range") from None
        offset = self._offset_data_start + self._allocated_offsets[position]
        fmt = self._get_packing_format(position)
        (value,) = struct.unpack_from(fmt, self.shm.buf, offset)
        return self._get_back_transform(position, fmt)(value)

    def __setitem__(self, position: int, value: Any) -> None:
        try:
            position = self._position(position)
        except IndexError:
            raise IndexError("assignment index out of range") from None
        current_format = self._get_packing_format(position)
        offset = self._offset_data_start + self._allocated_offsets[position]
        if isinstance(value, (str, bytes)):
            allocated_length = self._slot_length(position)
            encoded_value = value.encode(_ENCODING) if isinstance(value, str) else value
            if len(encoded_value) > allocated_length:
                raise ValueError("bytes/str item exceeds available storage")
            new_format = current_format if current_format[-1] == "s" \
                else _TYPES_MAPPING[str] % (allocated_length,)
        else:
            new_format = _TYPES_MAPPING[type(value)]
            encoded_value = value
        buf = self.shm.buf
        struct.pack_into("8s", buf, self._offset_packing_formats + position * _FIELD,
                         new_format.encode(_ENCODING))
        struct.pack_into("b", buf, self._offset_back_transform_codes + position,
                         _recreation_code(value))
        struct.pack_into(new_format, buf, offset, encoded_value)

    def __len__(self) -> int:
        return self._list_len

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({list(self)}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        """The ``struct`` format of all items currently stored."""
        return "".join(self._get_packing_format(i) for i in range(self._list_len))

    @property
    def _format_size_metainfo(self):
        return "q" * (self._list_len + 1)

    @property
    def _format_packing_metainfo(self):
        return "8s" * self._list_len

    @property
    def _format_back_transform_codes(self):
        return "b" * self._list_len

    @property
    def _offset_data_start(self):
        return (self._list_len + 2) * _FIELD

    @property
    def _offset_packing_formats(self):
        return self._offset_data_start + self._allocated_offsets[-1]

    @property
    def _offset_back_transform_codes(self):
        return self._offset_packing_formats + self._list_len * _FIELD

    def count(self, value: Any) -> int:
        """L.count(value) -> integer -- return number of occurrences of value."""
        return sum(value == entry for entry in self)

    def index(self, value: Any) -> int:
        """L.index(value) -> integer -- return first index of value.
        Raises ValueError if the value is not present."""
        for position, entry in enumerate(self):
            if value == entry:
                return position
        raise ValueError(f"{value!r} not in this container")
