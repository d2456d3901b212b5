"""The parent's side of the benchmark children: start N of them, command them, stop them.

Children are real new interpreters (`python -m bench.child`), started alone, never
forked from the benchmark process, so they attach the way an unrelated program would.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
REPLY_TIMEOUT = 600.0  # a 4 GiB touch with 4 KiB pages on a slow machine, with 64 neighbours


def child_environment() -> dict[str, str]:
    """The parent's environment (MSHARE_ROOT included) with this checkout importable.

    The mshare this process imported comes first and the checkout (for ``bench``) last,
    so an unbuilt source tree never shadows the installed package."""
    import mshare

    environment = dict(os.environ)
    measured = str(Path(mshare.__file__).resolve().parent.parent)
    paths = [measured] + [p for p in environment.get("PYTHONPATH", "").split(":") if p] + [str(REPOSITORY)]
    environment["PYTHONPATH"] = ":".join(paths)
    return environment


class Child:
    def __init__(self, backend: str, name: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.child", json.dumps({"backend": backend, "name": name})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd="/", env=child_environment(),
        )

    def send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def receive(self, event: str) -> dict:
        # A child writes one line per command, so nothing waits in the pipe's text buffer
        # and select() on the descriptor is enough to bound the wait.
        ready, _, _ = select.select([self.process.stdout], [], [], REPLY_TIMEOUT)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"child {self.process.pid} gave no {event!r} "
                               f"(exit code {self.process.poll()})")
        answer = json.loads(line)
        if answer["event"] != event:
            raise RuntimeError(f"child {self.process.pid} said {answer!r}, expected {event!r}")
        return answer

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            try:
                self.send("exit")
            except BrokenPipeError:
                pass
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()
        return code


class Fleet:
    """N children of one backend and region; a context manager that always stops them all."""

    def __init__(self, backend: str, name: str, count: int):
        self.children: list[Child] = []
        try:
            for _ in range(count):
                self.children.append(Child(backend, name))
            self.ready = [child.receive("ready") for child in self.children]
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info) -> None:
        codes = self.stop()
        if exc_info[0] is None and any(codes):
            raise RuntimeError(f"benchmark children exited with codes {codes}")

    def command(self, command: str, event: str) -> list[dict]:
        """Send `command` to every child first, then collect, so they work at the same time."""
        for child in self.children:
            child.send(command)
        return [child.receive(event) for child in self.children]

    def stop(self) -> list[int]:
        return [child.stop() for child in self.children]


def run_one(backend: str, name: str) -> dict:
    """A new process, started alone, attaches and touches the region; its own timing."""
    with Fleet(backend, name, 1) as fleet:
        return fleet.command("attach", "attached")[0]
