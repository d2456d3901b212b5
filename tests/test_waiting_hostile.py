"""A writer scribbling on event and condition words makes a victim's calls wake early,
time out or fail with ``CorruptBookkeepingError``; never crash, hang or write elsewhere.

The attacker, a forked process, rewrites both words with random 64-bit values in a tight
loop; the victim, a fresh interpreter, makes a bounded number of event and condition calls
meanwhile. Checked: the victim exits normally (no signal), every failed call raised a
documented exception, every wait returned a bool, and a canary array beside the words is
unchanged.
"""

import ctypes
import json
import multiprocessing
import random

import mshare

from helpers import start_python

VICTIM_CALLS = 3000

VICTIM = """
import collections, json, random
import mshare
from mshare import CorruptBookkeepingError

region = mshare.attach({name!r})
event, condition = region.event("event"), region.condition("condition")
random.seed({seed})
outcomes = collections.Counter()
for call in range({calls}):
    choice = random.randrange(6)
    try:
        if choice == 0:
            event.set()
        elif choice == 1:
            event.clear()
        elif choice == 2:
            outcomes["is_set " + type(event.is_set()).__name__] += 1
        elif choice == 3:
            outcomes["event wait " + type(event.wait(random.choice((0, 0.001)))).__name__] += 1
        else:
            with region.lock(timeout=5):
                if choice == 4:
                    woken = condition.wait(random.choice((0, 0.001)))
                    outcomes["condition wait " + type(woken).__name__] += 1
                else:
                    condition.notify(random.randrange(3))
                    condition.notify_all()
        outcomes["done"] += 1
    except CorruptBookkeepingError as error:
        outcomes["CorruptBookkeepingError"] += 1
canary = region.array("canary")
outcomes["canary intact"] = int(bool((canary == {pattern}).all()))
del canary
region.close()
print(json.dumps(outcomes))
"""


def _scribble(addresses, stop, seed):
    words = [ctypes.c_uint64.from_address(addr) for addr in addresses]
    generator = random.Random(seed)
    while not stop.is_set():
        for _ in range(10_000):
            generator.choice(words).value = generator.getrandbits(64)


def test_a_writer_scribbling_on_the_words_only_makes_calls_fail_or_wake(registry_path, name):
    region = mshare.create(name, 1 << 20)
    region.event("event")
    region.condition("condition")
    pattern = 0x5A5A5A5A5A5A5A5A
    canary = region.array("canary", (4096,), "uint64")
    canary[:] = pattern
    addresses = [region._bookkeeping.find_named(n)[0] for n in ("event", "condition")]
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    attacker = context.Process(target=_scribble, args=(addresses, stop, 1))
    attacker.start()
    try:
        victim = start_python(VICTIM.format(name=name, seed=2, calls=VICTIM_CALLS,
                                            pattern=pattern), stdout=-1, stderr=-1, text=True)
        output, errors = victim.communicate(timeout=300)
    finally:
        stop.set()
        attacker.join(60)
    assert attacker.exitcode == 0
    assert victim.returncode == 0, errors
    outcomes = json.loads(output)
    assert outcomes.pop("canary intact") == 1
    failures = outcomes.pop("CorruptBookkeepingError", 0)
    assert outcomes.pop("done") + failures == VICTIM_CALLS
    assert set(outcomes) <= {"is_set bool", "event wait bool", "condition wait bool"}
    assert (canary == pattern).all()
    del canary
    region.close()
    mshare.unlink(name)
