"""region.lock(): mutual exclusion across processes, owner death, timeouts, misuse."""

import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import threading
import time

import pytest

import mshare

from helpers import mapped_at, start_python
from mshare._shared import LOCK_WAITERS, USER_LOCK_OFFSET

WORKERS = 8
INCREMENTS = 3000
# A lock word no thread can have: its id is above Linux's largest (2**22).
NO_SUCH_THREAD = 0x1234_5678_7FFF_FFF0


def lock_word(region):
    """The region's lock word in this process's mapping of it."""
    return ctypes.c_uint64.from_address(region._bookkeeping.bookkeeping_addr + USER_LOCK_OFFSET)


def wait_until_someone_waits(region, tries=100_000):
    """Return once a waiter has marked the lock word (it is about to sleep on it)."""
    word = lock_word(region)
    for _ in range(tries):
        if word.value & LOCK_WAITERS:
            return
        time.sleep(0.001)
    pytest.fail("no waiter ever marked the lock word")


def start_holder(name):
    """Another process holding the region's lock until a line arrives on its stdin."""
    holder = start_python(f"""
        import sys, mshare
        with mshare.attach({name!r}).lock():
            print("held", flush=True)
            sys.stdin.readline()
    """, stdin=-1, stdout=-1, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def start_time_of(pid):
    """Field 22 of /proc/PID/stat: what the lock word's upper half holds for its holder."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[19])


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
    holder = start_holder(name)
    with pytest.raises(TimeoutError):
        with region.lock(timeout=0.3):
            pytest.fail("acquired a lock another process holds")
    assert region._bookkeeping.locks_held == 0
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
    holder = start_holder(name)
    waited = threading.Event()

    def waiter():
        with region.lock(timeout=60):
            waited.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    # This thread runs Python while the other one waits: it sees the waiter's mark.
    wait_until_someone_waits(region)
    assert not waited.is_set()
    holder.communicate("release\n", timeout=30)
    thread.join(60)
    assert waited.is_set()
    region.close()
    mshare.unlink(name)


def test_a_signal_handler_interrupts_a_wait(registry_path, name):
    region = mshare.create(name, 4096)
    holder = start_holder(name)

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


def test_a_child_forked_while_another_thread_holds_the_lock_does_not_hold_it(registry_path, name):
    region = mshare.create(name, 4096)
    taken, leave = threading.Event(), threading.Event()

    def holder():
        with region.lock():
            taken.set()
            leave.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    assert taken.wait(10)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                region.lock(timeout=0.1).acquire()
            except TimeoutError:  # the parent's thread holds it, not this process
                if region._bookkeeping.locks_held == 0:
                    region.close()
                    code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    leave.set()
    thread.join(10)
    assert os.waitstatus_to_exitcode(status) == 0
    with region.lock(timeout=0):
        pass
    region.close()
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


def test_a_thread_that_ends_holding_the_lock_is_reported_as_dead(registry_path, name):
    region = mshare.create(name, 4096)
    thread = threading.Thread(target=lambda: region.lock().acquire())
    thread.start()
    thread.join(10)
    assert lock_word(region).value != 0
    with pytest.raises(mshare.OwnerDiedError):
        region.lock(timeout=10).acquire()
    assert lock_word(region).value == 0
    with region.lock(timeout=0):
        pass
    region.close()  # no hold of the ended thread is left to refuse it
    mshare.unlink(name)


def test_garbage_in_the_lock_word_is_a_dead_holder(registry_path, name):
    region = mshare.create(name, 4096)
    lock_word(region).value = NO_SUCH_THREAD
    with pytest.raises(mshare.OwnerDiedError):
        region.lock(timeout=10).acquire()
    with region.lock(timeout=0):
        assert lock_word(region).value not in (0, NO_SUCH_THREAD)
    assert lock_word(region).value == 0
    region.close()
    mshare.unlink(name)


def test_a_reused_thread_id_does_not_pass_for_the_holder(registry_path, name):
    region = mshare.create(name, 4096)
    alive = start_python("import sys; sys.stdin.read()", stdin=-1)
    try:
        start = start_time_of(alive.pid) & 0xFFFF_FFFF
        # The live process's id with its own start time: a live holder, so the wait times out.
        lock_word(region).value = start << 32 | alive.pid
        with pytest.raises(TimeoutError):
            region.lock(timeout=0.2).acquire()
        # The same id with another start time: a thread that reused the id of a dead holder.
        lock_word(region).value = (start ^ 1) << 32 | alive.pid
        with pytest.raises(mshare.OwnerDiedError):
            region.lock(timeout=10).acquire()
        assert lock_word(region).value == 0
    finally:
        alive.communicate(b"", timeout=30)
    region.close()
    mshare.unlink(name)


def test_this_threads_own_word_planted_in_the_lock_is_damage_not_reentry(registry_path, name):
    """A writer of the region can read any thread's start time from /proc and plant that
    thread's word: the thread that does not hold the lock is told the bookkeeping is
    damaged, not that it is re-entering."""
    region = mshare.create(name, 4096)
    me = threading.get_native_id()
    with open(f"/proc/self/task/{me}/stat") as stat:
        start = int(stat.read().rsplit(")", 1)[1].split()[19]) & 0xFFFF_FFFF
    lock_word(region).value = start << 32 | me
    with pytest.raises(mshare.CorruptBookkeepingError, match="names this thread"):
        region.lock(timeout=0.2).acquire()
    lock_word(region).value = 0
    with region.lock(timeout=0):
        assert lock_word(region).value & 0xFFFF_FFFF == me
    region.close()
    mshare.unlink(name)


def test_ctrl_c_during_a_blocked_wait_raises_and_holds_nothing(registry_path, name):
    region = mshare.create(name, 4096)
    with region.lock():
        held = lock_word(region).value
        waiter = start_python(f"""
            import ctypes, os, signal, threading, time
            import mshare
            from mshare._shared import LOCK_WAITERS, USER_LOCK_OFFSET
            region = mshare.attach({name!r})
            word = ctypes.c_uint64.from_address(
                region._bookkeeping.bookkeeping_addr + USER_LOCK_OFFSET)

            def interrupt_once_waiting():
                while not word.value & LOCK_WAITERS:
                    time.sleep(0.001)
                os.kill(os.getpid(), signal.SIGINT)

            threading.Thread(target=interrupt_once_waiting, daemon=True).start()
            try:
                region.lock().acquire()
                print("acquired")
            except KeyboardInterrupt:
                print("interrupted", region._bookkeeping.locks_held, word.value & ~LOCK_WAITERS)
            region.close()
        """, stdout=-1, text=True)
        output = waiter.communicate(timeout=60)[0].split()
        assert waiter.returncode == 0
        assert output == ["interrupted", "0", str(held)]
    with region.lock(timeout=0):
        pass
    region.close()
    mshare.unlink(name)


def test_close_wakes_a_thread_blocked_in_lock(registry_path, name):
    region = mshare.create(name, 4096)
    holder = start_holder(name)
    raised = []

    def waiter():
        try:
            region.lock().acquire()
        except ValueError as error:
            raised.append(str(error))

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until_someone_waits(region)
    region.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(raised) == 1 and "closed while this thread waited" in raised[0]
    holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    mshare.unlink(name)


def test_a_region_dropped_while_holding_keeps_its_lock_mapped_until_released(registry_path, name):
    region = mshare.create(name, 4096)
    addr, lock = region.addr, region.lock()
    lock.acquire()
    del region
    gc.collect()
    assert mapped_at(addr), "the mapping of a held lock went with its Region"
    lock.release()
    del lock
    gc.collect()
    assert not mapped_at(addr)
    mshare.unlink(name)


def objects_alive_inside(make_lock):
    """How many more memory blocks are alive inside `with make_lock():` than outside it (0:
    the `with` made nothing that lasts the block, such as a bound ``__exit__``). The fewest
    of several rounds: the first warm caches up, and another thread of the test process
    allocating meanwhile can only add."""
    found = []
    for _ in range(6):
        outside = sys.getallocatedblocks()
        with make_lock():
            inside = sys.getallocatedblocks()
        reference = sys.getallocatedblocks()
        reference_again = sys.getallocatedblocks()
        found.append((inside - outside) - (reference_again - reference))
    return min(found[1:])


def test_the_documented_with_makes_no_object(registry_path, name):
    region = mshare.create(name, 4096)
    assert objects_alive_inside(region.lock) == 0
    # The form with a timeout makes its lock and binds its methods, as any object's: seen.
    assert objects_alive_inside(lambda: region.lock(timeout=5)) > 0
    region.close()
    mshare.unlink(name)


def test_with_gives_the_lock_and_keeps_a_dropped_region_mapped(registry_path, name):
    region = mshare.create(name, 4096)
    with region.lock() as lock:
        assert lock is region.lock()
        assert lock_word(region).value != 0
    assert lock_word(region).value == 0
    addr = region.addr
    region.close()
    with mshare.attach(name).lock() as lock:  # the region is dropped before the block runs
        assert mapped_at(addr)
        with pytest.raises(RuntimeError, match="not re-entrant"):
            lock.acquire()
    del lock
    gc.collect()
    assert not mapped_at(addr)
    with mshare.attach(name) as region:
        assert lock_word(region).value == 0, "the lock stayed held after its block"
        exit_method = region.lock().__exit__
        with pytest.raises(TypeError, match="3 arguments"):
            exit_method(None)
        with pytest.raises(RuntimeError, match="not held"):
            exit_method(None, None, None)
    mshare.unlink(name)


def test_a_process_that_drops_a_held_region_and_dies_leaves_the_lock_to_others(registry_path,
                                                                              name):
    region = mshare.create(name, 4096)
    # The child keeps no reference to the region, its lock or its bookkeeping.
    child = start_python(f"""
        import gc, mshare
        region = mshare.attach({name!r})
        addr = region.addr
        region.lock().acquire()
        del region
        gc.collect()
        with open("/proc/self/maps") as maps:
            print(any(int(line.split("-")[0], 16) == addr for line in maps), flush=True)
    """, stdout=-1, text=True)
    assert child.communicate(timeout=60)[0].strip() == "True", "the held lock was unmapped"
    assert child.returncode == 0
    with pytest.raises(mshare.OwnerDiedError):
        region.lock(timeout=10).acquire()
    with region.lock(timeout=0):
        pass
    region.close()
    mshare.unlink(name)


