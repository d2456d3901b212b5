"""Test-only fault injection: die at a named step, to prove crash safety.

With ``MSHARE_FAULT=OPERATION:STEP`` in its environment (for example
``MSHARE_FAULT=create:range-claimed``) a process sends itself ``SIGKILL`` the moment it
reaches that step, exactly as if the OOM killer or an operator had struck there. The
crash-safety tests run every step in ``STEPS`` and check that the registry stays
consistent and that ``mshare gc`` restores it. The variable is read once, at import (the
tests set it in a fresh process's environment); without it (always, outside tests) a
step costs one comparison.
"""

import os
import signal

ENVIRONMENT_VARIABLE = "MSHARE_FAULT"

# In the order each operation reaches them; tests iterate over this tuple.
STEPS = (
    "create:locked",          # registry lock held, name checked free
    "create:indexed",         # range's bits in the address index, no range file yet
    "create:range-opened",    # range file created, still empty
    "create:range-claimed",   # range file written
    "create:data-created",    # data object made (hugetlbfs: reserved by the mapping, next)
    "create:mapped",          # data mapped at the region's address
    "create:entry-written",   # entry written to its temporary file, not yet linked
    "create:published",       # entry visible under its name
    "create:marked",          # attach mark taken; create is about to return
    "attach:entry-read",      # entry read and validated (attach takes no registry lock)
    "attach:data-opened",     # data object opened and checked against the entry
    "attach:marked",          # attach mark taken
    "attach:mapped",          # data mapped; attach is about to return
    "close:unmapped",         # mapping gone, attach mark still held
    "close:unmarked",         # attach mark dropped, range not yet released
    "unlink:locked",          # registry lock held
    "unlink:entry-removed",   # name gone (the unlink is committed), data still there
    "unlink:data-removed",    # data object gone, range file still there
)


_STRUCK_STEP = os.environ.get(ENVIRONMENT_VARIABLE)


def point(step: str) -> None:
    """Reached ``step``: die here if the environment asks for it."""
    if step == _STRUCK_STEP:
        os.kill(os.getpid(), signal.SIGKILL)


def struck(step: str) -> bool:
    """Whether the environment asks to die at ``step``: for a step inside a compiled call,
    which dies there itself."""
    return step == _STRUCK_STEP
