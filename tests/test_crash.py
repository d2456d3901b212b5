"""Crash safety: a process killed (SIGKILL) at any step of create, attach, close or
unlink leaves a registry whose visible regions are all complete; gc then restores
exactly the state before the operation (or after it, once it was committed), and
every complete region keeps its data.

Every step of ``mshare.faults.STEPS`` is struck in a fresh interpreter; then processes
forked mid-way through random operations are killed at random moments. A watcher
process attaches throughout and must never see a half-made region.
"""

import os
import random
import signal
import subprocess
import time

import pytest

import mshare
from consistency import assert_clean, visible_regions
from figures import record, scaled
from helpers import start_python
from leftovers import crash, state
from mshare.faults import STEPS

SURVIVOR = b"complete regions keep their data"
# Steps after which the operation counts as done: the entry is published (create) or
# removed (unlink). Killed earlier, it is as if the operation had never started.
COMMITTED = {"create:published", "create:marked", "unlink:entry-removed", "unlink:data-removed"}


@pytest.fixture
def survivor(registry_path):
    with mshare.create("survivor", 1 << 16, mode=0o644) as region:
        region.buf[:len(SURVIVOR)] = SURVIVOR
    yield "survivor"
    mshare.unlink("survivor")


def assert_survivor_intact():
    with mshare.attach("survivor", readonly=True) as region:
        assert bytes(region.buf[:len(SURVIVOR)]) == SURVIVOR


@pytest.fixture
def watcher(registry_path, survivor, tmp_path):
    """A process that attaches every visible region over and over and reports whatever
    is not a complete region. ``pause()`` holds it still (its mappings closed)."""
    pause_file = tmp_path / "pause"
    pause_file.touch()
    stop_file = tmp_path / "stop"
    process = start_python(f"""
        import fcntl, mshare, os
        pause = os.open({str(pause_file)!r}, os.O_RDONLY)
        looks = anomalies = 0
        while not os.path.exists({str(stop_file)!r}):
            fcntl.flock(pause, fcntl.LOCK_SH)
            try:
                for info in mshare.list():
                    looks += 1
                    if info.status != "ok":
                        anomalies += 1
                        print("listed", info.name, info.status, flush=True)
                        continue
                    try:
                        with mshare.attach(info.name, readonly=True) as region:
                            if region.size != info.size:
                                raise AssertionError("size differs from the entry")
                            sum(region.buf[::4096])
                    except FileNotFoundError as error:
                        if "no region named" not in str(error):
                            raise
            except Exception as error:
                anomalies += 1
                print("saw", repr(error), flush=True)
            finally:
                fcntl.flock(pause, fcntl.LOCK_UN)
        print("looks", looks, "anomalies", anomalies, flush=True)
    """, stdout=subprocess.PIPE, text=True)

    class Watcher:
        def pause(self):
            return _Paused(pause_file)

        def finish(self):
            stop_file.touch()
            output, _ = process.communicate(timeout=60)
            assert process.returncode == 0, output
            last = output.splitlines()[-1].split()
            assert last[0] == "looks" and last[3] == "0", output
            return int(last[1])

    yield Watcher()
    if process.poll() is None:
        process.kill()
        process.wait()


class _Paused:
    def __init__(self, path):
        import fcntl

        self.fcntl = fcntl
        self.fd = os.open(path, os.O_RDONLY)

    def __enter__(self):
        self.fcntl.flock(self.fd, self.fcntl.LOCK_EX)

    def __exit__(self, *exc):
        os.close(self.fd)


def survives(step, iteration):
    """Whether the target region exists once a kill at ``step`` has been cleaned up."""
    operation = step.split(":")[0]
    if operation == "create":
        return step in COMMITTED
    if operation == "unlink":
        return step not in COMMITTED
    if operation == "close":
        return iteration % 2 == 0  # odd iterations unlinked it before closing
    return True


def run_step(step, target, size, iteration, backend):
    """Strike ``step`` once, on a target region that exists when the operation needs it."""
    operation = step.split(":")[0]
    if operation == "create":
        crash(f"import mshare; {backend.create_code(target, size)}", step)
        return
    with mshare.create(target, size, hugepages=backend.hugepages) as region:
        region.buf[:8] = iteration.to_bytes(8, "little")
    if operation == "attach":
        crash(f"import mshare; mshare.attach({target!r})", step)
    elif operation == "close":
        # Every other time the region is unlinked while mapped, so the close that is
        # killed is the one that should have released the address range.
        unlink = f"mshare.unlink({target!r}); " if iteration % 2 else ""
        crash(f"import mshare; r = mshare.attach({target!r}); {unlink}r.close()", step)
    else:
        crash(f"import mshare; mshare.unlink({target!r})", step)


def test_kill_at_every_step(registry_path, survivor, watcher, backend):
    iterations = scaled(10)
    for iteration in range(iterations):
        for step in STEPS:
            target = f"target-{iteration}"
            size = backend.size(4096 * (iteration + 1) + 123)
            with watcher.pause():
                before = state(registry_path)
            run_step(step, target, size, iteration, backend)
            with watcher.pause():
                exists = survives(step, iteration)
                assert (target in visible_regions(registry_path)) == exists, step
                report = mshare.gc()
                assert mshare.gc().removed == [], step
                assert (target in assert_clean(registry_path)) == exists, step
                if exists:
                    with mshare.attach(target, readonly=True) as region:
                        assert (region.size, region.backend) == (size, backend.name)
                        expected = 0 if step.startswith("create") else iteration
                        assert int.from_bytes(region.buf[:8], "little") == expected, step
                    mshare.unlink(target)
                    mshare.gc()
                assert state(registry_path) == before, (step, report)
                assert_survivor_intact()
    looks = watcher.finish()
    assert looks > 0
    record("fault injection", backend=backend.name, steps=len(STEPS), iterations=iterations,
           kills=len(STEPS) * iterations, watcher_looks=looks)


def test_kill_at_random_moments(registry_path, survivor, backend):
    iterations = scaled(400)
    names = [f"churn-{index}" for index in range(4)]
    rng = random.Random(5)
    swept = 0
    started = time.monotonic()
    for iteration in range(iterations):
        pid = os.fork()
        if pid == 0:
            _churn(names, iteration, backend)
        time.sleep(rng.uniform(0, 0.02))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, status
        for name in visible_regions(registry_path):
            with mshare.attach(name, readonly=True):
                pass
        if iteration % 10 == 9:
            swept += len(mshare.gc().removed)
            assert mshare.gc().removed == []
            assert_clean(registry_path)
            assert_survivor_intact()
    for name in visible_regions(registry_path):
        if name != "survivor":
            mshare.unlink(name)
    mshare.gc()
    assert_clean(registry_path)
    assert list(visible_regions(registry_path)) == ["survivor"]
    assert_survivor_intact()
    assert swept > 0  # the kills did strike in the middle of operations
    record("random kills", backend=backend.name, kills=iterations, leftovers_swept=swept,
           seconds=round(time.monotonic() - started, 1))


def _churn(names, seed, backend):
    """In a forked child: create, attach, write, close and unlink until killed."""
    code = 1
    try:
        rng = random.Random(seed)
        while True:
            name = rng.choice(names)
            try:
                action = rng.randrange(3)
                if action == 0:
                    mshare.create(name, backend.size(4096 * rng.randint(1, 8)),
                                  hugepages=backend.hugepages).close()
                elif action == 1:
                    with mshare.attach(name) as region:
                        region.buf[:4] = b"busy"
                else:
                    mshare.unlink(name)
            except (FileExistsError, FileNotFoundError):
                pass
    finally:
        os._exit(code)
