"""Finalizers do no blocking work: ``Region``s freed by the cyclic collector in the middle
of ``create``/``attach``, or dropped while their lock is held, never hang, crash, or lose
the lock (another process is told the holder died)."""

import subprocess

import pytest

import mshare
from figures import record, scaled
from helpers import run_python, start_python

ROUNDS = scaled(120)
# Generous: only a deadlock comes anywhere near it.
HANG_GUARD = 300


def test_cyclic_collector_inside_create_and_attach_never_deadlocks(registry_path):
    # Each round leaves an unlinked region's Region in a reference cycle; with a threshold
    # of 1 the collector frees it inside the next create/attach, while that call holds the
    # registry lock. Another process creates and unlinks all along.
    collector = start_python(f"""
        import gc, os
        import mshare
        gc.set_threshold(1)
        for index in range({ROUNDS}):
            region = mshare.create(f"cycle-{{index}}", 4096)
            mshare.unlink(region.name)
            region.cycle = region
            del region
            keeper = mshare.create("keeper", 4096)
            with mshare.attach("keeper") as again:
                again.buf[0] = index % 256
            keeper.close()
            mshare.unlink("keeper")
        gc.collect()
        mshare.list()  # a safe point: ranges of regions let go above are released here
        print(sorted(name for name in os.listdir({registry_path!r}) if name.startswith(".range-")))
    """, stdout=subprocess.PIPE, text=True)
    neighbour = start_python(f"""
        import mshare
        for index in range({ROUNDS}):
            mshare.create("neighbour", 4096).close()
            mshare.unlink("neighbour")
    """)
    try:
        output, _ = collector.communicate(timeout=HANG_GUARD)
        assert neighbour.wait(timeout=HANG_GUARD) == 0
    finally:
        collector.kill()
        neighbour.kill()
    assert collector.returncode == 0
    # Every unlinked region's address range went with its last mapping: none is lost.
    assert output.strip() == "[]"
    record("finalizers", cyclic_rounds=ROUNDS)


def test_region_dropped_while_its_lock_is_held_keeps_the_lock(registry_path, name):
    mshare.create(name, 1 << 20).close()
    run_python(f"""
        import gc
        import mshare
        region = mshare.attach({name!r})
        lock = region.lock()
        lock.acquire()
        del region
        gc.collect()
        # The lock's memory is still mapped: releasing it works, and so does using it.
        lock.release()
        with mshare.attach({name!r}) as again, again.lock(timeout=10):
            pass
    """, timeout=HANG_GUARD)
    mshare.unlink(name)


def test_holder_dying_after_dropping_its_region_is_reported(registry_path, name):
    region = mshare.create(name, 1 << 20)
    run_python(f"""
        import gc, os
        import mshare
        lock = mshare.attach({name!r}).lock()   # the Region is dropped at once
        lock.acquire()
        gc.collect()
        os._exit(0)                             # dies holding the lock
    """, timeout=HANG_GUARD)
    with pytest.raises(mshare.OwnerDiedError):
        with region.lock(timeout=30):
            pass
    with region.lock(timeout=30):  # free again after the report
        pass
    region.close()
    mshare.unlink(name)
