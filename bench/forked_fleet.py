"""Hundreds of processes forked from the benchmark process, each attaching one region.

The kernel proposal's scenario is one large region mapped by a thousand processes; a
thousand new interpreters would not fit on a small machine, but processes forked after
the libraries are imported share their parent's memory and cost little. Every child
waits, attaches the region and reads every page when told, reports, and stays alive
(holding its mapping and page tables) until the fleet stops.

Children are released one at a time: each figure is then one process's own attach and
touch, not a share of the CPU among all of them. Three pipes serve the whole fleet, so a
thousand children need six descriptors, not thousands: a child waiting to start reads one
byte of the *go* pipe (a one-byte read is atomic: one child per byte), reports through
the *replies* pipe (a short write is atomic), then reads the *stop* pipe, which gives
nothing until the parent closes it; a child that read its byte never reads *go* again, so
no release meant for another is lost. Closing both ends the fleet.
"""

from __future__ import annotations

import gc
import json
import os
import select
import time
import traceback

from bench.backends import Backend
from bench.machine import vmpte_kib

GO = b"g"
REPLY_TIMEOUT = 600.0  # one child's attach and touch of a 4 GiB region on 4 KiB pages


def read_every_page(buf: memoryview, page_size: int) -> int:
    """Read one byte in every page; return how many pages."""
    return len(buf[::page_size].tobytes())


def _serve(backend: Backend, name: str, go: int, replies: int, stop: int) -> int:
    """A child's life: wait for GO, attach and read, reply; then wait for the stop pipe's end."""
    handles = []
    try:
        if os.read(go, 1) != GO:
            return 0
        before_kib = vmpte_kib()
        start = time.perf_counter()
        handle = backend.attach(name)
        handles.append(handle)
        pages = read_every_page(handle.buf, handle.page_size)
        seconds = time.perf_counter() - start
        reply = {"pid": os.getpid(), "seconds": seconds, "pages": pages,
                 "page_size": handle.page_size, "addr": handle.addr,
                 "vmpte_growth_kib": vmpte_kib() - before_kib}
        os.write(replies, (json.dumps(reply) + "\n").encode())
        os.read(stop, 1)
        return 0
    except BaseException:
        message = {"pid": os.getpid(), "error": traceback.format_exc()[-1500:]}
        os.write(replies, (json.dumps(message) + "\n").encode())
        return 1


class ForkedFleet:
    """``count`` forked children over region ``name`` of ``backend``; always stopped.

    ``release_all()`` lets them attach one after another and returns their replies; the
    children keep their mappings until ``stop()`` (or leaving the ``with`` block)."""

    def __init__(self, backend: Backend, name: str, count: int):
        self.pids: list[int] = []
        self._go_read, self._go = os.pipe()
        self._replies, self._replies_write = os.pipe()
        self._stop_read, self._stop = os.pipe()
        self._pending = b""
        try:
            for _ in range(count):
                pid = os.fork()
                if pid == 0:
                    # A collection would touch, and so copy, the whole inherited heap.
                    gc.disable()
                    code = 1
                    try:
                        for parent_end in (self._go, self._replies, self._stop):
                            os.close(parent_end)
                        code = _serve(backend, name, self._go_read, self._replies_write,
                                      self._stop_read)
                    finally:
                        os._exit(code)
                self.pids.append(pid)
        except BaseException:
            self.stop()
            raise
        finally:
            # The children's ends: once closed here, the parent sees EOF if all children die.
            for child_end in (self._go_read, self._replies_write, self._stop_read):
                os.close(child_end)

    def __enter__(self) -> ForkedFleet:
        return self

    def __exit__(self, *exc_info) -> None:
        codes = self.stop()
        if exc_info[0] is None and any(codes):
            raise RuntimeError(f"forked benchmark children exited with codes {set(codes)}")

    def release_all(self) -> list[dict]:
        replies = []
        for _ in self.pids:
            os.write(self._go, GO)
            reply = self._reply()
            if "error" in reply:
                raise RuntimeError(f"child {reply['pid']} failed:\n{reply['error']}")
            replies.append(reply)
        return replies

    def _reply(self) -> dict:
        while b"\n" not in self._pending:
            ready, _, _ = select.select([self._replies], [], [], REPLY_TIMEOUT)
            chunk = os.read(self._replies, 65536) if ready else b""
            if not chunk:
                raise RuntimeError("a forked benchmark child gave no reply")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def stop(self) -> list[int]:
        """End every child (one never released exits at once), reap them, return exit codes."""
        if self._go >= 0:
            for parent_end in (self._go, self._replies, self._stop):
                os.close(parent_end)
            self._go = self._replies = self._stop = -1
        codes = []
        for pid in self.pids:
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
        self.pids = []
        return codes
