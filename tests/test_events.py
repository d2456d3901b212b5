"""region.event(): set, clear and wait across processes; timeouts, Ctrl-C, close, kinds."""

import multiprocessing
import os
import threading

import pytest

import mshare

from helpers import start_python
from waiting_helpers import wait_until_sleeping_on, word_addr


def _wait_and_report(name, event_name, results):
    region = mshare.attach(name)
    results.put(region.event(event_name).wait(timeout=60))
    region.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_set_in_one_process_wakes_waiters_in_others(registry_path, name, method):
    region = mshare.create(name, 1 << 16)
    ready = region.event("ready")
    context = multiprocessing.get_context(method)
    results = context.Queue()
    waiters = [context.Process(target=_wait_and_report, args=(name, "ready", results))
               for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        wait_until_sleeping_on(word_addr(region, "ready"), waiter.pid)
    assert not ready.is_set()
    ready.set()
    assert [results.get(timeout=60) for _ in waiters] == [True, True, True]
    for waiter in waiters:
        waiter.join(60)
        assert waiter.exitcode == 0
    assert ready.is_set()
    region.close()
    mshare.unlink(name)


def test_a_wait_that_times_out_returns_false(registry_path, name):
    region = mshare.create(name, 1 << 16)
    event = region.event("never")
    assert event.wait(timeout=0) is False
    assert event.wait(timeout=0.05) is False
    event.set()
    assert event.wait(timeout=0) is True
    event.clear()
    assert event.wait(timeout=0) is False
    region.close()
    mshare.unlink(name)


def test_a_set_undone_by_clear_before_the_waiter_wakes_still_wakes_it(registry_path, name):
    region = mshare.create(name, 1 << 16)
    event = region.event("pulse")
    results = []
    waiter = threading.Thread(target=lambda: results.append(event.wait(timeout=60)))
    waiter.start()
    wait_until_sleeping_on(word_addr(region, "pulse"), os.getpid(), waiter.native_id)
    event.set()
    event.clear()
    waiter.join(60)
    assert results == [True]
    assert not event.is_set()
    region.close()
    mshare.unlink(name)


def test_ctrl_c_during_a_blocked_wait_raises_keyboard_interrupt(registry_path, name):
    region = mshare.create(name, 1 << 16)
    region.event("never")
    waiter = start_python(f"""
        import mshare
        from waiting_helpers import interrupt_once_sleeping_on, word_addr
        region = mshare.attach({name!r})
        event = region.event("never")
        interrupt_once_sleeping_on(word_addr(region, "never"))
        try:
            event.wait()
            print("returned")
        except KeyboardInterrupt:
            print("interrupted", event.is_set())
        region.close()
        print("closed")
    """, stdout=-1, text=True)
    output = waiter.communicate(timeout=60)[0].split()
    assert waiter.returncode == 0
    assert output == ["interrupted", "False", "closed"]
    region.close()
    mshare.unlink(name)


def test_close_wakes_a_thread_waiting_for_an_event(registry_path, name):
    region = mshare.create(name, 1 << 16)
    event = region.event("never")
    addr = word_addr(region, "never")
    raised = []

    def waiter():
        try:
            event.wait()
        except ValueError as error:
            raised.append(str(error))

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until_sleeping_on(addr, os.getpid(), thread.native_id)
    region.close()
    thread.join(60)
    assert not thread.is_alive()
    assert len(raised) == 1 and "closed while this thread waited on 'never'" in raised[0]
    with pytest.raises(ValueError, match="closed"):
        event.set()
    mshare.unlink(name)


def test_events_are_named_objects_of_their_own_kind(registry_path, name):
    region = mshare.create(name, 1 << 16)
    region.event("go")
    region.condition("turn")
    region.array("data", (4,), "int32")
    assert region.names() == ["data", "go", "turn"]
    assert region.objects() == {"data": "array", "go": "event", "turn": "condition"}
    with pytest.raises(TypeError, match="'go' is a named event, not an array"):
        region.array("go")
    with pytest.raises(TypeError, match="'go' is a named event, not an array"):
        region.array("go", (8,), "uint8", exist_ok=True)
    with pytest.raises(TypeError, match="'go' is a named event, not a condition"):
        region.condition("go")
    with pytest.raises(TypeError, match="'data' is a named array, not an event"):
        region.event("data")
    region.event("go").set()
    other = mshare.attach(name)
    assert other.event("go").is_set()  # found, not made again
    other.close()
    region.delete("go")
    assert "go" not in region.names()
    assert not region.event("go").is_set()  # a new one, zeroed
    region.close()
    mshare.unlink(name)


def test_bad_arguments_leave_nothing_behind(registry_path, name):
    region = mshare.create(name, 1 << 16)
    event = region.event("e")
    before = region._bookkeeping.verify()
    for timeout, error in ((-1, ValueError), (float("nan"), ValueError), ("1", TypeError),
                           (True, TypeError)):
        with pytest.raises(error, match="timeout"):
            event.wait(timeout)
    for bad, error in (("", ValueError), ("x" * 64, ValueError), (b"e", TypeError)):
        with pytest.raises(error, match="object name"):
            region.event(bad)
    assert region._bookkeeping.verify() == before
    assert region.names() == ["e"]
    region.close()
    reader = mshare.attach(name, readonly=True)
    with pytest.raises(PermissionError, match="event"):
        reader.event("e")
    reader.close()
    mshare.unlink(name)

