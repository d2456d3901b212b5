"""A KeyboardInterrupt landing anywhere in a queue's reserve, put or get (the claim of a
slot included) loses no slot and delivers no half-written item; a loan dropped without its
``with`` block ending frees its slot."""

import gc
import queue
import random
import signal
import sys
import threading

import numpy
import pytest

import mshare

SLOTS = 4
WORDS = 64  # an item: WORDS copies of its sequence number, written in two halves
# Calls interrupted before a run stops, and the most rounds it may take to get there.
INTERRUPTIONS, MAX_ROUNDS = 300, 1_000_000


class _Storm:
    """SIGINT sent to the main thread at random moments from another thread. Its handler
    raises KeyboardInterrupt only while ``armed``, so the test's own bookkeeping between
    queue calls is never interrupted. Threads switch often meanwhile, so the sender gets
    the GIL between the main thread's calls, not only every 5 ms."""

    def __init__(self, seed):
        self.armed = False
        self.sent = 0
        self._stop = threading.Event()
        self._random = random.Random(seed)
        self._main = threading.main_thread().ident
        self._thread = threading.Thread(target=self._send)

    def _handler(self, signum, frame):
        if self.armed:
            raise KeyboardInterrupt

    def _send(self):
        while not self._stop.wait(self._random.uniform(0, 2e-4)):
            signal.pthread_kill(self._main, signal.SIGINT)
            self.sent += 1

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handler)
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self.armed = False
        self._stop.set()
        self._thread.join()
        self._stop.is_set()  # a Python call: a signal still pending runs the handler here
        signal.signal(signal.SIGINT, self._previous)
        sys.setswitchinterval(self._interval)


def _produce_one(items, sequence, how):
    if how == "put":
        items.put(numpy.full(WORDS, sequence, numpy.uint64), timeout=0)
        return
    with items.reserve((WORDS,), numpy.uint64, timeout=0) as slot:
        slot[:WORDS // 2] = sequence  # an interrupt between the halves: dropped
        slot[WORDS // 2:] = sequence


def _consume_one(items, seen):
    with items.get(timeout=0) as item:
        seen.append(item.copy())


def _check_intact_and_in_order(taken):
    for item in taken:
        assert (item == item[0]).all(), f"a half-written item was delivered: {item}"
    sequences = [int(item[0]) for item in taken]
    assert sequences == sorted(set(sequences)), "an item came twice or out of order"


def _check_every_slot_free(items):
    """SLOTS items go in and come out at once: no slot is left claimed."""
    for sequence in range(SLOTS):
        items.put(numpy.full(WORDS, 1 << 40 | sequence, numpy.uint64), timeout=0)
    with pytest.raises(queue.Full):
        items.put_nowait(numpy.zeros(WORDS, numpy.uint64))
    for sequence in range(SLOTS):
        assert int(items.get_nowait()[0]) == 1 << 40 | sequence
    with pytest.raises(queue.Empty):
        items.get_nowait()


@pytest.fixture
def items(registry_path, name):
    region = mshare.create(name, 1 << 20)
    try:
        yield region.queue("items", SLOTS, WORDS * 8)
    finally:
        gc.collect()  # views held by a failed test's traceback
        region.close()
        mshare.unlink(name)


@pytest.mark.parametrize("how", ["reserve", "put"])
def test_interrupts_anywhere_in_claims_lose_no_slot_and_deliver_nothing_half_written(
        items, how):
    taken, interrupted = [], 0
    with _Storm(seed=len(how)) as storm:
        for sequence in range(MAX_ROUNDS):
            if interrupted >= INTERRUPTIONS:
                break
            step = _produce_one if sequence % 2 == 0 else _consume_one
            try:
                storm.armed = True
                if step is _produce_one:
                    step(items, sequence, how)
                else:
                    step(items, taken)
                storm.armed = False
            except KeyboardInterrupt:
                storm.armed = False
                interrupted += 1
            except (queue.Full, queue.Empty):
                storm.armed = False
    assert interrupted >= INTERRUPTIONS, f"{storm.sent} signals interrupted {interrupted} calls"
    while True:
        try:
            taken.append(items.get_nowait())
        except queue.Empty:
            break
    assert taken, "no item got through"
    _check_intact_and_in_order(taken)
    _check_every_slot_free(items)


def test_a_loan_dropped_without_its_block_ending_frees_its_slot(items):
    loan = items.reserve((WORDS,), numpy.uint64, timeout=0)
    loan.__enter__()[:] = 7
    with pytest.raises(RuntimeError, match="already claimed"):
        loan.__enter__()
    del loan
    gc.collect()
    items.put(numpy.full(WORDS, 3, numpy.uint64), timeout=0)
    lent = items.get(timeout=0)
    assert int(lent.__enter__()[0]) == 3, "the dropped loan's item was delivered"
    del lent
    gc.collect()
    _check_every_slot_free(items)
