from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import numpy.typing

from mshare._shared import Bookkeeping

QUEUE_KIND: Final[str]
HEADER_BYTES: Final[int]
SLOT_HEADER_BYTES: Final[int]

def slot_stride(slot_size: int) -> int: ...

class SlotClaim:
    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> Literal[False]: ...

class Loan(SlotClaim):
    def __enter__(self) -> numpy.typing.NDArray[Any]: ...

class Lent(SlotClaim):
    def __enter__(self) -> numpy.typing.NDArray[Any]: ...

_Ring = TypeVar("_Ring", bound="SlotRing")

class SlotRing:
    @property
    def slots(self) -> int: ...
    @property
    def slot_size(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def region_name(self) -> str: ...
    @classmethod
    def over_block(
        cls: type[_Ring],
        owner: Bookkeeping,
        region: Any,
        name: str,
        addr: int,
        nbytes: int,
        slots: int,
        slot_size: int,
    ) -> _Ring: ...
    def payload_addr(self, index: int) -> int: ...
    def reserve(
        self,
        shape: int | tuple[int, ...],
        dtype: numpy.typing.DTypeLike,
        timeout: float | None = None,
    ) -> Loan: ...
    def get(self, timeout: float | None = None) -> Lent: ...
    def put(self, data: numpy.typing.ArrayLike, timeout: float | None = None) -> None: ...
