"""A writer of a region, running as another user, scribbles on a queue's words (its header
and every slot's header) and on an event's and a condition's word while a victim, a third
user, uses all three: the victim gets items, errors or timeouts, never a crash, a hang, a
view outside a slot's payload or a write outside the slots.

The attacker maps the region's data object writable, as any user the region's mode lets in
may, and rewrites those words with values chosen to hurt (garbage, the slot states, small
counts, the counters give or take a little, a live thread's lock word). The victim makes a
bounded number of ``put``/``reserve``/``get``/``get_copy`` and event and condition calls,
checks every view it is lent lies inside one slot's payload, and at the end checks a canary
array in the same region and a canary on its own heap.
"""

import json
import signal
import subprocess

import pytest

import mshare
from mshare._queue import SLOT_HEADER_BYTES

from helpers import start_python
from people import as_member, as_stranger
from test_hostile_writers import data_object_path

VICTIM_CALLS = 600
SLOTS, SLOT_SIZE = 4, 4096
CANARY = 0x5A5A5A5A5A5A5A5A

ATTACKER = """
import ctypes, json, mmap, os, random, signal, struct, sys, threading, time

orders = json.loads(sys.stdin.readline())
path, length, spans, seed = orders["path"], orders["length"], orders["spans"], orders["seed"]
# A flag, not a threading.Event: the handler runs between the main thread's bytecodes, and
# Event.set() takes the lock Event.wait() may be holding there, which would hang the attacker.
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
with open(path, "r+b") as data:
    memory = mmap.mmap(data.fileno(), length)
words = [offset + 8 * i for offset, size in spans for i in range(size // 8)]
with open("/proc/thread-self/stat") as stat:
    start_time = int(stat.read().rsplit(")", 1)[1].split()[19])
alive = start_time << 32 | threading.get_native_id()
rng = random.Random(seed)
writes = 0
print("ready", flush=True)
while not stopped:
    for _ in range(rng.randrange(1, 200)):
        at = rng.choice(words)
        current = struct.unpack_from("<Q", memory, at)[0]
        value = rng.choice((
            rng.getrandbits(64), 0, 1, 2, 3, rng.randrange(4096), (1 << 64) - 1,
            (current + rng.randrange(-8, 9)) % (1 << 64), alive,
        ))
        struct.pack_into("<Q", memory, at, value)
        writes += 1
    time.sleep(rng.random() * 0.001)
print(json.dumps({"writes": writes}), flush=True)
"""

VICTIM = """
import collections, hashlib, json, os, queue, random, sys
import mshare, mshare._shared
from mshare import CorruptBookkeepingError, OwnerDiedError

# Keep the bounded waits short: a planted live holder's word costs a call this long.
mshare._shared.INTERNAL_LOCK_TIMEOUT = 0.2
rng = random.Random({seed})
region = mshare.attach({name!r})
items, event, condition = region.queue("items"), region.event("event"), region.condition("condition")
canary = region.array("canary")
payloads = {{items.payload_addr(index) for index in range(items.slots)}}
heap = bytearray(os.urandom(1 << 16))
heap_digest = hashlib.sha256(heap).hexdigest()
print("ready", flush=True)
sys.stdin.readline()  # the attacker runs from here on

counts = collections.Counter()
outside = []
documented = (queue.Full, queue.Empty, CorruptBookkeepingError, TimeoutError, OwnerDiedError)

def check(view, what):
    if view.ctypes.data not in payloads or view.nbytes > items.slot_size:
        outside.append(f"{{what}}: {{view.nbytes}} bytes at 0x{{view.ctypes.data:x}}")
        return False
    return True

for call in range({calls}):
    operation = rng.choice(["put", "reserve", "get", "get_copy", "event", "condition"])
    try:
        if operation == "put":
            items.put(os.urandom(rng.randrange(1, items.slot_size + 1)), timeout=0.005)
        elif operation == "reserve":
            with items.reserve((rng.randrange(1, items.slot_size // 8 + 1),), "int64",
                               timeout=0.005) as slot:
                if check(slot, "reserve"):
                    slot[:] = 7
        elif operation == "get":
            with items.get(timeout=0.005) as item:
                check(item, "get")
                int(item.view("uint8").sum())  # read every byte it says it has
        elif operation == "get_copy":
            items.get_copy(timeout=0.005)
        elif operation == "event":
            rng.choice([event.set, event.clear])()
            assert type(event.wait(0.001)) is bool
        else:
            with region.lock(timeout=0.2):
                condition.notify_all()
                condition.wait(0.001)
        counts["ok"] += 1
    except documented as error:
        counts[type(error).__name__] += 1
    except RuntimeError as error:
        # A slot this thread held was taken from it: the attacker made its owner word
        # name someone else, and the next claimer judged that holder dead.
        if "not held by this thread" not in str(error):
            raise
        counts["slot taken away"] += 1
    finally:
        slot = item = None  # views of the region go before close(), whatever was raised

intact = (bool((canary == {canary}).all())
          and hashlib.sha256(heap).hexdigest() == heap_digest)
del canary
region.close()
print(json.dumps({{"counts": counts, "outside": outside, "intact": intact}}), flush=True)
"""


def _spans(region, queue, target):
    """(offset, bytes) in the data object of every word the attacker aims at: the queue's
    header, its slots' headers and the event's and condition's words, or only the slots'
    headers (with the counters intact, the victim claims the slots the attacker rewrites)."""
    header = region._bookkeeping.find_named("items")[0]
    slots = [(queue.payload_addr(index) - SLOT_HEADER_BYTES - region.addr, SLOT_HEADER_BYTES)
             for index in range(queue.slots)]
    if target == "slot headers":
        return slots
    words = [(region._bookkeeping.find_named(name)[0] - region.addr, 8)
             for name in ("event", "condition")]
    return [(header - region.addr, queue.payload_addr(0) - SLOT_HEADER_BYTES - header)] + \
        slots + words


@pytest.mark.parametrize("target", ["every word", "slot headers"])
def test_a_writer_scribbling_on_queue_event_and_condition_words_only_makes_calls_fail(
        user_site, registry_path, name, target):
    region = mshare.create(name, 1 << 20, mode=0o666, hugepages="off")
    try:
        items = region.queue("items", SLOTS, SLOT_SIZE)
        region.event("event")
        region.condition("condition")
        canary = region.array("canary", (4096,), "uint64")
        canary[:] = CANARY
        report, writes = attack(region, name, _spans(region, items, target))
        assert (canary == CANARY).all()
    finally:
        canary = items = None
        region.close()
        mshare.unlink(name)
    print(f"{target}: {writes} words written; the victim's calls: {report['counts']}")
    assert not report["outside"], report["outside"][:3]
    assert report["intact"], "the canary beside the queue or on the victim's heap changed"
    assert sum(report["counts"].values()) == VICTIM_CALLS
    assert writes > 0 and set(report["counts"]) - {"ok"}, "the attack never disturbed the victim"


def attack(region, name, spans):
    """The victim's report and the attacker's count of words written, once the victim has
    made every call; asserts the victim exited normally."""
    victim = start_python(VICTIM.format(name=name, seed=3, calls=VICTIM_CALLS, canary=CANARY),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **as_member())
    attacker = None
    writes = 0
    try:
        assert victim.stdout.readline().strip() == "ready", victim.stderr.read()
        attacker = start_python(ATTACKER, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **as_stranger())
        attacker.stdin.write(json.dumps({
            "path": data_object_path(region), "length": region._attachment.entry.map_length,
            "spans": spans, "seed": 5}) + "\n")
        attacker.stdin.flush()
        assert attacker.stdout.readline().strip() == "ready", attacker.stderr.read()
        output, errors = victim.communicate("go\n", timeout=600)
    finally:
        if attacker is not None and attacker.poll() is None:
            attacker.send_signal(signal.SIGTERM)
            writes = json.loads(attacker.communicate(timeout=30)[0].splitlines()[-1])["writes"]
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert victim.returncode == 0, f"victim exited {victim.returncode}:\n{errors}"
    return json.loads(output.splitlines()[-1]), writes
