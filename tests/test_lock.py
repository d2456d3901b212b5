"""region.lock(): mutual exclusion across processes, owner death, timeouts, misuse."""

import multiprocessing
import os
import signal
import threading
import time

import pytest

import mshare

from helpers import start_python

WORKERS = 8
INCREMENTS = 3000


def _increment(region, times):
    counter = region.array("counter")
    for _ in range(times):
        with region.lock():
            # Read, yield the CPU, write back: without the lock most updates get lost.
            value = counter[0]
            if value % 64 == 0:
                time.sleep(0)
            counter[0] = value + 1
    del counter


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_lock_excludes_across_processes(registry_path, name, method):
    region = mshare.create(name, 1 << 16)
    counter = region.array("counter", (1,), "int64")
    context = multiprocessing.get_context(method)
    workers = [context.Process(target=_increment, args=(region, INCREMENTS))
               for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert counter[0] == WORKERS * INCREMENTS
    del counter
    region.close()
    mshare.unlink(name)


def _hold_lock_and_die(name, ready, delay):
    region = mshare.attach(name)
    region.lock().acquire()
    ready.set()
    time.sleep(delay)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("delay", [0.0, 0.3], ids=["dead-before-waiting", "dies-while-waited-on"])
def test_holder_killed_is_reported_once_and_the_lock_is_free(registry_path, name, delay):
    region = mshare.create(name, 4096)
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=_hold_lock_and_die, args=(name, ready, delay))
    child.start()
    assert ready.wait(10)
    if delay == 0.0:
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
    with pytest.raises(mshare.OwnerDiedError) as raised:
        with region.lock(timeout=10):
            pytest.fail("the lock of a dead holder must not be handed over silently")
    assert isinstance(raised.value, OSError)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    # Made consistent and released: taken at once, by this and by a new process.
    with region.lock(timeout=0):
        pass
    probe = start_python(f"""
        import mshare
        with mshare.attach({name!r}).lock(timeout=5):
            print("taken")
    """, stdout=-1, text=True)
    assert probe.communicate(timeout=30)[0].strip() == "taken"
    assert probe.returncode == 0
    region.close()
    mshare.unlink(name)


def test_timeout_while_another_process_holds_the_lock(registry_path, name):
    region = mshare.create(name, 4096)
    holder = start_python(f"""
        import sys, time, mshare
        region = mshare.attach({name!r})
        with region.lock():
            print("held", flush=True)
            sys.stdin.readline()
    """, stdin=-1, stdout=-1, text=True)
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        with region.lock(timeout=0.3):
            pytest.fail("acquired a lock another process holds")
    assert 0.3 <= time.monotonic() - started < 5
    with pytest.raises(TimeoutError):
        region.lock(timeout=0).acquire()
    holder.communicate("release\n", timeout=30)
    assert holder.returncode == 0
    with region.lock(timeout=5):
        pass
    region.close()
    mshare.unlink(name)


def test_waiting_releases_the_gil(registry_path, name):
    region = mshare.create(name, 4096)
    holder = start_python(f"""
        import time, mshare
        region = mshare.attach({name!r})
        with region.lock():
            print("held", flush=True)
            time.sleep(0.6)
    """, stdout=-1, text=True)
    assert holder.stdout.readline().strip() == "held"
    waited = []

    def waiter():
        with region.lock(timeout=10):
            waited.append(time.monotonic())

    thread = threading.Thread(target=waiter)
    thread.start()
    spins, until = 0, time.monotonic() + 0.3
    while time.monotonic() < until:  # runs only if the waiting thread let go of the GIL
        spins += 1
    thread.join(10)
    assert spins > 10_000
    assert waited and waited[0] > until
    holder.communicate(timeout=30)
    region.close()
    mshare.unlink(name)


def test_a_signal_handler_interrupts_a_wait(registry_path, name):
    region = mshare.create(name, 4096)
    holder = start_python(f"""
        import sys, mshare
        with mshare.attach({name!r}).lock():
            print("held", flush=True)
            sys.stdin.readline()
    """, stdin=-1, stdout=-1, text=True)
    assert holder.stdout.readline().strip() == "held"

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            with region.lock():
                pytest.fail("acquired a lock another process holds")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    region.close()
    mshare.unlink(name)


def test_misuse_is_refused_clearly(registry_path, name):
    region = mshare.create(name, 4096)
    with region.lock():
        with pytest.raises(RuntimeError, match="not re-entrant"):
            region.lock(timeout=1).acquire()
        with pytest.raises(RuntimeError, match="holds its lock"):
            region.close()
    assert not region.closed
    with pytest.raises(RuntimeError, match="not held"):
        region.lock().release()
    for bad in (-1, float("nan"), "soon"):
        with pytest.raises((ValueError, TypeError)):
            region.lock(timeout=bad)
    region.close()
    with pytest.raises(ValueError, match="closed"):
        region.lock()
    with mshare.attach(name, readonly=True) as reader:
        with pytest.raises(PermissionError):
            reader.lock()
    mshare.unlink(name)


def test_a_child_forked_by_the_holder_does_not_hold_the_lock(registry_path, name):
    region = mshare.create(name, 4096)
    with region.lock():
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                try:
                    region.lock(timeout=0.1).acquire()
                except TimeoutError:  # the parent's thread holds it, not this process
                    region.close()
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    region.close()
    mshare.unlink(name)


def test_each_region_has_its_own_lock(registry_path, name):
    first = mshare.create(name, 4096)
    second = mshare.create(name + "-2", 4096)
    with first.lock(), second.lock(timeout=0):
        pass
    first.close()
    second.close()
    mshare.unlink(name)
    mshare.unlink(name + "-2")
