"""Owning what a call opens or creates from the instant it exists.

CPython runs Python signal handlers between bytecodes of the main thread, so a
``KeyboardInterrupt`` can strike after ``os.open`` returned and before its result is
stored anywhere: the descriptor (or the file an ``O_EXCL`` open just made) is lost. Three
things close that window:

- ``open_descriptor``: the compiled core opens the file and wraps the descriptor in its
  owner in one C call that holds the GIL, where no Python handler can run (the C-level
  handler only sets a flag). Plain opens need nothing else.
- ``signals_deferred()``: while it is active, the main thread's ``SIGINT`` handler only
  records the signal; on leaving, the original handler runs (and raises) once. Each use
  spans a step that makes something (a file created, a mapping) and the statement that
  hands the result to its owner, never a wait, so Ctrl-C is still handled at once everywhere else.
  A block inside another costs nothing (no handler swap), so a call whose steps follow one
  another without waiting holds Ctrl-C back once around all of them (``create``), and
  lets it through again (``signals_allowed``) for the one step that may wait: reserving a
  large region.
  Swapping the Python-level handler works whichever thread the kernel delivered the
  signal to (blocking it with ``pthread_sigmask`` in the main thread would not: another
  thread's delivery still makes the main thread run the handler).
- ``Descriptor``: an open file descriptor closed exactly once, explicitly or when the
  object is dropped (in C, so no signal handler can run in between), so a descriptor
  that an exception carries away is closed too.

Handlers other than ``SIGINT``'s are left alone.
"""

import _signal
import os
import signal
import threading
from contextlib import ExitStack, contextmanager
from types import FrameType, TracebackType
from typing import Callable, Iterator, List, Optional, Type, Union

from mshare._core import OwnedDescriptor

_recorded: List[int] = []
# The handlers that active ``signals_deferred`` blocks hold back, innermost last.
_held_back: List[Callable[[int, Optional[FrameType]], object]] = []


def _record(signum: int, frame: Optional[FrameType]) -> None:
    _recorded.append(signum)


class signals_deferred:
    """Hold back the main thread's ``SIGINT`` handler until the block is left.

    A class rather than a generator: a round trip enters it about twenty times, nearly
    always inside another one, where it costs one check."""

    __slots__ = ("_original",)
    _original: Optional[Callable[[int, Optional[FrameType]], object]]

    def __enter__(self) -> None:
        self._original = None
        if threading.current_thread() is not threading.main_thread():
            return  # Python signal handlers only ever run in the main thread
        # The C functions behind ``signal.getsignal``/``signal.signal``: the public ones
        # convert every handler to and from an enum.
        original = _signal.getsignal(signal.SIGINT)
        if not callable(original) or original is _record:
            return  # no Python handler to hold back, or already held back by an outer block
        # From here a signal only reaches ``_record``, whichever bytecode it lands on.
        _signal.signal(signal.SIGINT, _record)
        _held_back.append(original)
        self._original = original

    def __exit__(self, *exc: object) -> None:
        original = self._original
        if original is None:
            return
        self._original = None
        _held_back.pop()
        _signal.signal(signal.SIGINT, original)
        if _recorded:
            _recorded.clear()
            original(signal.SIGINT, None)


@contextmanager
def signals_allowed() -> Iterator[None]:
    """Inside ``signals_deferred``: let Ctrl-C through for one step that may wait long
    (reserving many GiB), raising one that came meanwhile first. Everything made before
    it must already have its undo step."""
    if (threading.current_thread() is not threading.main_thread() or not _held_back
            or _signal.getsignal(signal.SIGINT) is not _record):
        yield
        return
    original = _held_back[-1]
    try:
        _signal.signal(signal.SIGINT, original)
        if _recorded:
            _recorded.clear()
            original(signal.SIGINT, None)
        yield
    finally:
        _signal.signal(signal.SIGINT, _record)


class Descriptor:
    """An open file descriptor, closed exactly once: by ``close()``, by leaving a ``with``
    block, or when the object is dropped.

    Dropping it runs no Python code and never lets another thread run: the descriptor is
    held by the compiled core's ``OwnedDescriptor``, which closes it in C with the GIL
    held. A Python ``__del__`` could itself be interrupted by a signal handler on entry
    and leak the descriptor it was to close."""

    __slots__ = ("fd", "_owner")
    fd: int
    _owner: OwnedDescriptor

    def __init__(self, fd: int) -> None:
        self._owner = OwnedDescriptor(fd)
        self.fd = fd

    @classmethod
    def owning(cls, owner: OwnedDescriptor) -> "Descriptor":
        """The ``Descriptor`` of what the ``OwnedDescriptor`` ``owner`` holds; should an
        interrupt strike before it is made, ``owner`` is dropped, which closes it."""
        descriptor = cls.__new__(cls)
        descriptor._owner = owner
        descriptor.fd = owner.fileno()
        return descriptor

    def close(self) -> None:
        self.fd = -1
        self._owner.close()

    def replace(self, fd: int) -> None:
        """Own ``fd`` instead, closing the descriptor owned so far."""
        previous, self._owner = self._owner, OwnedDescriptor(fd)
        self.fd = fd
        previous.close()

    def __enter__(self) -> "Descriptor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Descriptor {self.fd}>"


class Undo(ExitStack):
    """An ``ExitStack`` that no signal handler interrupts while it unwinds: an interrupt
    between two of its callbacks would skip the second."""

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> bool:
        with signals_deferred():
            return super().__exit__(exc_type, exc, traceback)


def open_descriptor(path: Union[str, bytes], flags: int, mode: int = 0o777, *,
                    dir_fd: Optional[int] = None) -> Descriptor:
    """``os.open`` whose result is owned by a ``Descriptor`` before any signal is handled:
    the core opens and owns it in one step, so no handler needs holding back."""
    return Descriptor.owning(OwnedDescriptor.open(path, flags, mode, dir_fd))


def create_file(undo: ExitStack, path: str, flags: int, mode: int, remove: Callable[[], object], *,
                dir_fd: Optional[int] = None) -> Descriptor:
    """Create a file with ``O_CREAT | O_EXCL``; ``remove`` (which must tolerate a file
    already gone) is pushed on the ``Undo`` stack ``undo`` in the same uninterruptible
    step, so the file is never left behind by an exception that ``undo`` unwinds."""
    with signals_deferred():
        descriptor = open_descriptor(path, flags | os.O_CREAT | os.O_EXCL, mode, dir_fd=dir_fd)
        undo.callback(remove)
    return descriptor
