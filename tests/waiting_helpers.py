"""Telling, without timing, that a thread sleeps on an event's or condition's word."""

import os
import time

import pytest

# The futex system call's number, which /proc/TID/syscall starts with while a thread is in it.
FUTEX_SYSCALL = {"x86_64": 202, "aarch64": 98}.get(os.uname().machine)


def word_addr(region, name):
    """Where the word of the event or condition ``name`` is (the same in every process)."""
    return region._bookkeeping.find_named(name)[0]


def sleeps_on(addr, pid, tid=None):
    """True while the thread ``tid`` of ``pid`` (its main thread by default) is inside
    ``futex()`` on the word at ``addr``."""
    if FUTEX_SYSCALL is None:
        pytest.skip(f"the futex syscall number of {os.uname().machine} is not known here")
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/syscall") as status:
            fields = status.read().split()
    except OSError:
        return False
    return len(fields) > 1 and fields[0] == str(FUTEX_SYSCALL) and int(fields[1], 16) == addr


def wait_until_sleeping_on(addr, pid, tid=None, tries=30_000):
    """Return once that thread sleeps on the word (polled; fails if it never does)."""
    for _ in range(tries):
        if sleeps_on(addr, pid, tid):
            return
        time.sleep(0.001)
    pytest.fail(f"thread {tid or pid} never slept on the word at {addr:#x}")


def interrupt_once_sleeping_on(addr):
    """From a helper thread, send this process SIGINT once the calling thread sleeps on the
    word at ``addr``."""
    import signal
    import threading

    caller = threading.get_native_id()

    def interrupt():
        wait_until_sleeping_on(addr, os.getpid(), caller)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()


def hand_over(method, name, produce, consume, producers, consumers, per_producer):
    """Run ``produce(name, p)`` for each producer and ``consume(name, count, results)`` for
    each consumer (their counts adding up to every item) as ``method`` processes; check they
    all exit 0 and return what each consumer put on ``results``."""
    import multiprocessing

    total = producers * per_producer
    shares = [total // consumers + (i < total % consumers) for i in range(consumers)]
    context = multiprocessing.get_context(method)
    results = context.Queue()
    processes = ([context.Process(target=produce, args=(name, p)) for p in range(producers)]
                 + [context.Process(target=consume, args=(name, share, results))
                    for share in shares])
    for process in processes:
        process.start()
    taken = [results.get(timeout=180) for _ in shares]
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    return taken


def check_once_and_in_order(taken, producers, per_producer):
    """Every (producer, sequence, ...) item was taken exactly once, and each consumer took
    each producer's items in the order they were put."""
    every = sorted((item[0], item[1]) for part in taken for item in part)
    assert every == [(p, s) for p in range(producers) for s in range(per_producer)]
    for part in taken:
        for producer in range(producers):
            mine = [item[1] for item in part if item[0] == producer]
            assert mine == sorted(mine)
