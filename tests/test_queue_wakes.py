"""Who a queue wakes: consumers and producers asleep are counted apart, each on its own
side's word, so a publish or a free calls the kernel only when that side sleeps; a waiter
leaves the count however its wait ends."""

import queue
import threading
import time

import numpy
import pytest

import mshare

# The header's counts of sleeping consumers and producers, in 64-bit words.
ITEM_SLEEPERS, ROOM_SLEEPERS = 5, 6
PATIENCE = 60.0


@pytest.fixture
def items(registry_path, name):
    """A one-slot queue, and what its header's words read now (no view kept)."""
    region = mshare.create(name, 1 << 20)
    made = region.queue("items", 1, 64)
    offset = region._bookkeeping.find_named("items")[0] - region.addr

    def words(index):
        return int(region.ndarray("<u8", (8,), offset=offset)[index])

    yield made, words
    region.close()
    mshare.unlink(name)


def _asleep(words, index, thread):
    """Look until ``thread`` is counted asleep in word ``index`` (no clock asserted)."""
    while words(index) != 1:
        assert thread.is_alive(), "the waiter returned before it was counted asleep"
        time.sleep(0.001)


def _in_thread(call):
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(call()), daemon=True)
    thread.start()
    return thread, outcome


def test_a_blocked_get_is_counted_with_the_consumers_until_an_item_wakes_it(items):
    queue_, words = items
    thread, outcome = _in_thread(lambda: queue_.get_copy(timeout=PATIENCE))
    _asleep(words, ITEM_SLEEPERS, thread)
    assert words(ROOM_SLEEPERS) == 0
    queue_.put(b"item")
    thread.join(PATIENCE)
    assert bytes(outcome[0]) == b"item"
    assert words(ITEM_SLEEPERS) == 0 and words(ROOM_SLEEPERS) == 0


def test_a_blocked_put_is_counted_with_the_producers_until_a_free_wakes_it(items):
    queue_, words = items
    queue_.put(b"first")
    thread, outcome = _in_thread(lambda: queue_.put(b"second", timeout=PATIENCE))
    _asleep(words, ROOM_SLEEPERS, thread)
    assert words(ITEM_SLEEPERS) == 0
    assert bytes(queue_.get_copy()) == b"first"
    thread.join(PATIENCE)
    assert outcome == [None] and bytes(queue_.get_copy()) == b"second"
    assert words(ITEM_SLEEPERS) == 0 and words(ROOM_SLEEPERS) == 0


def test_a_wait_that_times_out_leaves_the_count(items):
    queue_, words = items

    def timed_out():
        with pytest.raises(queue.Empty):
            queue_.get(timeout=2).__enter__()
        return True

    thread, outcome = _in_thread(timed_out)
    _asleep(words, ITEM_SLEEPERS, thread)
    thread.join(PATIENCE)
    assert outcome == [True]
    assert words(ITEM_SLEEPERS) == 0
    queue_.put(numpy.arange(3))  # the queue works on
    assert queue_.get_copy().tolist() == [0, 1, 2]
