from types import TracebackType
from typing import Any, Final, Literal

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

class SlotRing:
    @property
    def slots(self) -> int: ...
    @property
    def slot_size(self) -> int: ...
    @property
    def name(self) -> str: ...
    @staticmethod
    def over_block(
        owner: Bookkeeping,
        name: str,
        addr: int,
        nbytes: int,
        slots: int,
        slot_size: int,
        mapped_at: int,
    ) -> SlotRing: ...
    def payload_addr(self, index: int) -> int: ...
    def reserve(
        self,
        buf: memoryview,
        shape: int | tuple[int, ...],
        dtype: numpy.typing.DTypeLike,
        timeout: float | None,
    ) -> Loan: ...
    def lend(self, buf: memoryview, timeout: float | None) -> Lent: ...
    def put(
        self, buf: memoryview, source: numpy.typing.NDArray[Any], timeout: float | None
    ) -> None: ...
