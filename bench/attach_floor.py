"""The floor under mshare's attach: its system calls alone.

An attach of a region on /dev/shm that this process does not map makes fifteen system
calls (tests/test_attach_cost.py lists them): the registry directory checked, the entry
opened and read (the kernel's own permission check), the data object opened, the attach
mark taken, the data shown still in place, the mapping made, and the closes. `AttachFloor`
makes exactly those, in that order and with those flags, from compiled code and with
nothing between them. No attach that keeps mshare's checks can take less, so its time
beside the peer's says how much of mshare's attach is the checks and how much is the rest.

The compiled part (`_attach_floor.pyx`) is built on first use with `pyximport`, which
needs Cython and a C compiler, as building mshare itself does.
"""

from __future__ import annotations

import mmap
import os

from bench.backends import Handle

_compiled = None


def _floor_module():
    """The compiled module, built (once per machine and version) on first use."""
    global _compiled
    if _compiled is None:
        import pyximport

        importers = pyximport.install(language_level=3, inplace=False)
        try:
            from bench import _attach_floor
        finally:
            pyximport.uninstall(*importers)
        _compiled = _attach_floor
    return _compiled


class AttachFloor:
    """Attach the /dev/shm region `name` of the current registry by its system calls alone."""

    name = "system calls alone"
    family = "floor"

    def __init__(self, name: str) -> None:
        # What an attach learns from the entry and keeps per process, worked out once here.
        from mshare.attach_plan import Plan
        from mshare.registry import Registry

        with Registry() as registry:
            entry, _ = registry.read_entry(name, writable=True)
            registry_path = registry.path
        if entry.backend != "shm":
            raise ValueError(f"the attach floor follows a /dev/shm attach, not {entry.backend}")
        plan = Plan(entry)
        self._module = _floor_module()
        self._arguments = (os.fsencode(registry_path), os.fsencode(name),
                           os.fsencode(plan.data_path), os.fsencode(plan.range_file),
                           entry.addr, entry.map_length)

    def attach(self) -> Handle:
        module, (*_, address, length) = self._module, self._arguments
        mark = module.attach(*self._arguments)
        return Handle(memoryview(b""), mmap.PAGESIZE, lambda: module.detach(address, length, mark))
