from types import TracebackType

from mshare._core import Mapping

BOOKKEEPING_SIZE: int
NAME_CAPACITY: int
NAME_MAX_BYTES: int
DTYPE_MAX_BYTES: int
MAX_DIMS: int
MAX_ALIGN: int
INTERNAL_LOCK_TIMEOUT: float
USER_LOCK_OFFSET: int
INTERNAL_LOCK_OFFSET: int
LOCK_WAITERS: int

class _BoundTo:
    """What the bound ``__enter__``/``__exit__`` a kept ``RegionLock`` holds are bound to."""

class _LockMethod:
    """``RegionLock.__enter__`` and ``__exit__``: descriptors handing out bound functions."""
    def __get__(self, instance: object, owner: object = ...) -> object: ...

class RegionLock:
    def __init__(self, owner: Bookkeeping, timeout: float | None = ...) -> None: ...
    def acquire(self) -> bool: ...
    def release(self) -> None: ...
    def __enter__(self) -> RegionLock: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool: ...

class RegionLocking:
    _lock_forever: RegionLock | None
    def lock(self, timeout: float | None = ...) -> RegionLock: ...
    def _writable(self, what: str) -> Bookkeeping: ...

class Bookkeeping:
    bookkeeping_addr: int
    arena_addr: int
    arena_size: int
    name: object
    locks_held: int
    @staticmethod
    def over_mapping(
        mapping: Mapping, data_length: int, arena_size: int, *, name: object = ...,
        keepalive: object = ...,
    ) -> Bookkeeping: ...
    def initialize(self) -> None: ...
    def detach(self) -> None: ...
    def lock(self, timeout: float | None = ...) -> RegionLock: ...
    def alloc(self, nbytes: int, align: int = ...) -> int: ...
    def free(self, addr: int) -> None: ...
    def verify(self) -> dict[str, int]: ...
    def create_named(
        self,
        name: str,
        nbytes: int,
        dtype: str,
        shape: tuple[int, ...],
        align: int = ...,
        zero: bool = ...,
    ) -> int: ...
    def find_named(self, name: str) -> tuple[int, int, str, tuple[int, ...]] | None: ...
    def named(self) -> list[str]: ...
    def delete_named(self, name: str) -> None: ...
