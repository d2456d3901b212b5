"""region.condition(): wait/notify with the region's lock across processes; timeouts,
Ctrl-C, close, and a holder that dies while a woken waiter re-takes the lock."""

import os
import signal
import threading

import pytest

import mshare

from helpers import start_python
from waiting_helpers import check_once_and_in_order, hand_over, wait_until_sleeping_on, word_addr

ITEMS_PER_PRODUCER = 300
CAPACITY = 8


def _make_ring(region):
    """A bounded buffer guarded by the region's lock: [head, tail] counters and the items."""
    region.array("counters", (2,), "int64")
    region.array("items", (CAPACITY, 2), "int64")  # (producer, sequence number) pairs
    region.condition("not_empty")
    region.condition("not_full")


def _produce(name, producer):
    region = mshare.attach(name)
    counters, items = region.array("counters"), region.array("items")
    not_empty, not_full = region.condition("not_empty"), region.condition("not_full")
    for sequence in range(ITEMS_PER_PRODUCER):
        with region.lock():
            assert not_full.wait_for(lambda: counters[1] - counters[0] < CAPACITY, timeout=60)
            items[counters[1] % CAPACITY] = (producer, sequence)
            counters[1] += 1
            not_empty.notify()
    del counters, items  # views of the region must go before it closes
    region.close()


def _consume(name, count, results):
    region = mshare.attach(name)
    counters, items = region.array("counters"), region.array("items")
    not_empty, not_full = region.condition("not_empty"), region.condition("not_full")
    taken = []
    for _ in range(count):
        with region.lock():
            assert not_empty.wait_for(lambda: counters[1] > counters[0], timeout=60)
            taken.append(tuple(int(v) for v in items[counters[0] % CAPACITY]))
            counters[0] += 1
            not_full.notify()
    results.put(taken)
    del counters, items
    region.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("producers, consumers", [(1, 1), (2, 3), (4, 4)])
def test_producers_and_consumers_hand_over_every_item_once_in_order(
        registry_path, name, method, producers, consumers):
    region = mshare.create(name, 1 << 16)
    _make_ring(region)
    taken = hand_over(method, name, _produce, _consume, producers, consumers,
                      ITEMS_PER_PRODUCER)
    check_once_and_in_order(taken, producers, ITEMS_PER_PRODUCER)
    total = producers * ITEMS_PER_PRODUCER
    assert region.array("counters").tolist() == [total, total]
    region.close()
    mshare.unlink(name)


def test_waits_and_notifies_need_the_lock(registry_path, name):
    region = mshare.create(name, 1 << 16)
    condition = region.condition("c")
    for call in (condition.wait, condition.notify, condition.notify_all,
                 lambda: condition.wait_for(lambda: False, timeout=0.01)):
        with pytest.raises(RuntimeError, match="needs the region's lock held by this thread"):
            call()
    with region.lock():
        with pytest.raises(ValueError, match="n must be >= 0"):
            condition.notify(-1)
        with pytest.raises(TypeError, match="n must be an int"):
            condition.notify(1.5)
    region.close()
    mshare.unlink(name)


def test_a_timed_out_wait_returns_false_holding_the_lock(registry_path, name):
    region = mshare.create(name, 1 << 16)
    condition = region.condition("c")
    with region.lock():
        assert condition.wait(timeout=0.05) is False
        assert region._bookkeeping.locks_held == 1
        assert condition.wait_for(lambda: 0, timeout=0.05) == 0
        assert region._bookkeeping.locks_held == 1
    assert region._bookkeeping.locks_held == 0
    with region.lock(timeout=0):
        assert condition.wait_for(lambda: "ready", timeout=0) == "ready"
    region.close()
    mshare.unlink(name)


def test_a_notify_from_another_process_wakes_the_waiter(registry_path, name):
    region = mshare.create(name, 1 << 16)
    condition = region.condition("c")
    flag = region.array("flag", (1,), "int64")
    waiter = start_python(f"""
        import mshare
        region = mshare.attach({name!r})
        flag, condition = region.array("flag"), region.condition("c")
        with region.lock():
            print(condition.wait_for(lambda: int(flag[0]), timeout=60))
        del flag
        region.close()
    """, stdout=-1, text=True)
    wait_until_sleeping_on(word_addr(region, "c"), waiter.pid)
    with region.lock():
        flag[0] = 7
        condition.notify()
    assert waiter.communicate(timeout=60)[0].split() == ["7"]
    assert waiter.returncode == 0
    del flag
    region.close()
    mshare.unlink(name)


def test_ctrl_c_during_a_wait_raises_and_the_with_block_releases_the_lock(registry_path, name):
    region = mshare.create(name, 1 << 16)
    region.condition("c")
    waiter = start_python(f"""
        import mshare
        from waiting_helpers import interrupt_once_sleeping_on, word_addr
        region = mshare.attach({name!r})
        condition = region.condition("c")
        interrupt_once_sleeping_on(word_addr(region, "c"))
        try:
            with region.lock():
                condition.wait()
            print("returned")
        except KeyboardInterrupt:
            print("interrupted", region._bookkeeping.locks_held)
        region.close()
    """, stdout=-1, text=True)
    output = waiter.communicate(timeout=60)[0].split()
    assert waiter.returncode == 0
    assert output == ["interrupted", "0"]
    with region.lock(timeout=0):
        pass
    region.close()
    mshare.unlink(name)


def test_a_holder_dying_while_the_woken_waiter_retakes_the_lock_is_reported(registry_path, name):
    region = mshare.create(name, 1 << 16)
    region.condition("c")
    waiter = start_python(f"""
        import mshare
        region = mshare.attach({name!r})
        condition = region.condition("c")
        with region.lock():
            try:
                condition.wait()
                print("no error")
            except mshare.OwnerDiedError:  # told, and holding the lock again
                print("owner died", region._bookkeeping.locks_held)
        with region.lock(timeout=0):
            print("free")
        region.close()
    """, stdout=-1, text=True)
    wait_until_sleeping_on(word_addr(region, "c"), waiter.pid)
    notifier = start_python(f"""
        import sys, mshare
        region = mshare.attach({name!r})
        region.lock().acquire()
        region.condition("c").notify()
        print("notified", flush=True)
        sys.stdin.read()
    """, stdin=-1, stdout=-1, text=True)
    assert notifier.stdout.readline().strip() == "notified"
    os.kill(notifier.pid, signal.SIGKILL)
    notifier.wait(60)
    output = waiter.communicate(timeout=60)[0].splitlines()
    assert waiter.returncode == 0
    assert output == ["owner died 1", "free"]
    region.close()
    mshare.unlink(name)


def test_close_wakes_a_condition_waiter_with_the_error_that_says_so(registry_path, name):
    region = mshare.create(name, 1 << 16)
    condition = region.condition("c")
    raised = []

    def waiter():
        try:
            with region.lock():
                condition.wait()
        except (ValueError, RuntimeError) as error:
            raised.append(error)

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until_sleeping_on(word_addr(region, "c"), os.getpid(), thread.native_id)
    region.close()
    thread.join(60)
    assert not thread.is_alive()
    assert len(raised) == 1 and type(raised[0]) is ValueError, raised
    assert "closed while this thread waited on 'c'" in str(raised[0])
    mshare.unlink(name)
