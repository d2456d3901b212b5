"""Threads of one process attaching, writing, closing and unlinking concurrently.

Within a process every ``Region`` over one region shares one mapping, counted by its
users; a race in that count would unmap memory a thread still uses (a crash) or hand a
thread a mapping other threads do not see (a lost write). Each thread therefore keeps
a tally through a fresh ``attach`` every round, and another process checks the tallies.
"""

import struct
import threading

import mshare
from helpers import run_python

THREADS = 6
ROUNDS = 60


def test_threads_share_mappings_without_deadlock_or_loss(registry_path):
    names = [f"t{i}" for i in range(3)]
    errors = []
    mshare.create("tally", 8 * THREADS).close()

    def worker(index):
        try:
            for round_number in range(ROUNDS):
                _churn(names[(index + round_number) % len(names)], index, round_number)
                with mshare.attach("tally") as tally:
                    (count,) = struct.unpack_from("<Q", tally.buf, 8 * index)
                    # What this thread stored last round, through a Region since closed:
                    # the shared mapping kept it.
                    assert count == round_number, (index, count, round_number)
                    struct.pack_into("<Q", tally.buf, 8 * index, count + 1)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck"
    assert errors == []
    tallies = run_python("""
        import struct, mshare
        with mshare.attach("tally", readonly=True) as tally:
            print(*(count for (count,) in struct.iter_unpack("<Q", tally.buf)))
    """).stdout.split()
    assert tallies == [str(ROUNDS)] * THREADS
    for name in names + ["tally"]:
        try:
            mshare.unlink(name)
        except FileNotFoundError:
            pass


def _churn(name, index, round_number):
    """Create or attach ``name``, write to it, close it, and now and then unlink it,
    while other threads do the same to the same names."""
    try:
        region = mshare.create(name, 4096)
    except FileExistsError:
        try:
            region = mshare.attach(name)
        except FileNotFoundError:
            return  # unlinked between our two calls
    with region:
        region.buf[index] = round_number % 251
    if round_number % 7 == index:
        try:
            mshare.unlink(name)
        except FileNotFoundError:
            pass
