"""Threads that use a region while another thread closes it and attaches again.

Worker threads loop over ``lock``, ``alloc``/``free``, named arrays, ``buf`` views and
``populate`` on whatever handle is current, while a closer thread closes that handle (the
only one, so the mapping really goes) and attaches a new one, for a bounded number of
rounds. Nothing may crash; every failure must be one of the documented ones:

* ``ValueError``: the handle was closed (before or while the call waited, see ``CLOSED``);
* ``BufferError`` / ``RuntimeError`` from ``close()``: a view is alive, or a worker holds
  the lock; the closer then tries again.
"""

import gc
import threading

import mshare
from figures import record, scaled
from helpers import mapped_at

ROUNDS = 40
WORKERS = 4
# What a call on a closed handle says: the core's words, and populate's (it reads
# /proc/self/smaps first and finds no mapping there).
CLOSED = ("closed", "nothing is mapped")


def _work(index, current, stop, progress, failures):
    operations = ("lock", "alloc", "array", "view", "populate")
    step = 0
    while not stop.is_set():
        region = current[0]
        operation = operations[(index + step) % len(operations)]
        step += 1
        try:
            if operation == "lock":
                with region.lock(timeout=30):
                    progress[index] += 0  # the allocator owns the bytes: touch none raw
            elif operation == "alloc":
                region.free(region.alloc(256))
            elif operation == "array":
                array = region.array(f"worker-{index}", (16,), "int64", exist_ok=True)
                array[0] += 1
                del array
            elif operation == "view":
                view = region.buf[64:128]
                bytes(view)  # read only: the allocator's headers live in these bytes
                view.release()
            else:
                region.populate()
            progress[index] += 1
        except ValueError as error:
            if not any(reason in str(error) for reason in CLOSED):
                failures.append(repr(error))
        except BaseException as error:  # reported by the test
            failures.append(repr(error))


def _close_until_done(region, counts):
    while True:
        try:
            region.close()
            return
        except BufferError:
            counts["refused, a view alive"] += 1
        except RuntimeError:
            counts["refused, the lock held"] += 1


def test_threads_keep_working_while_another_closes_and_reattaches(registry_path, name):
    # Large enough that populate takes a while with the GIL released.
    mshare.create(name, 32 << 20).close()
    current = [mshare.attach(name)]
    stop = threading.Event()
    progress = [0] * WORKERS
    failures = []
    counts = {"closes": 0, "refused, a view alive": 0, "refused, the lock held": 0}
    workers = [threading.Thread(target=_work, args=(i, current, stop, progress, failures))
               for i in range(WORKERS)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(scaled(ROUNDS)):
            seen = sum(progress)
            while sum(progress) < seen + 20 and not failures:
                stop.wait(0.001)  # let the workers run a while on this handle
            old = current[0]
            _close_until_done(old, counts)
            counts["closes"] += 1
            current[0] = mshare.attach(name)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    try:
        assert not any(worker.is_alive() for worker in workers), "a worker is stuck"
        region = current[0]
        stats = region._bookkeeping.verify()
        assert stats["used_blocks"] == stats["named_blocks"] == len(region.names())
        for array_name in region.names():
            region.delete(array_name)
    finally:
        current[0].close()
        mshare.unlink(name)
    assert not failures, failures[:5]
    assert all(progress), f"a worker never completed a call: {progress}"
    print(counts, "calls:", sum(progress))
    record("threads vs close", calls=sum(progress), **counts)


def test_close_waits_for_a_populate_in_flight(registry_path, name):
    region = mshare.create(name, 128 << 20, hugepages="off")
    mapping = region._attachment.mapping
    addr = region.addr
    outcome = []

    def populate():
        try:
            region.populate()
            outcome.append("populated")
        except BaseException as error:  # reported by the test
            outcome.append(repr(error))

    thread = threading.Thread(target=populate)
    thread.start()
    while not mapping.populating and not outcome:
        stop_for_a_moment()
    region.close()  # must not unmap under the populate, whenever it ran
    thread.join(60)
    assert outcome == ["populated"]
    # The populate's view kept the memory; with it gone, nothing else may.
    del mapping, region
    gc.collect()
    assert not mapped_at(addr)
    mshare.unlink(name)


def stop_for_a_moment():
    threading.Event().wait(0.0005)
