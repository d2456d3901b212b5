"""A writer of a region can make another process's lock, allocator and named-array calls
fail or wait, never write outside that region, read elsewhere, crash or hang.

A C attacker (``hostile_writer.c``, built here with gcc against the installed
``_layout.h``) maps a region's data object writable and rewrites its bookkeeping and the
start of its arena in a tight loop: every field at random, and each class of fields in turn.
Meanwhile a victim process, running as a third user, loops ``lock``/``alloc``/``free``/
``array``/``names``/``delete`` on that region for a bounded number of calls, writing into
every block it is given, while it also maps a private region (mode 0600, which the
attacker cannot open). Checked: the victim is never killed by a signal, its private region
and a canary on its Python heap never change, every address it is given lies inside the
shared region, and every failing call raises one of the documented exceptions.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile

import pytest

import mshare
from figures import record, scaled
from helpers import start_python
from people import as_member, as_stranger

TARGETS = ["all", "header", "arena-fields", "user-lock", "internal-lock", "busy-pending",
           "free-lists", "bitmaps", "name-slots", "slot-dtypes", "blocks"]
VICTIM_CALLS = 3000
SHARED_SIZE = {"shm": 1 << 20, "hugetlb": 4 << 20}

# Runs as another user. The exceptions it accepts are the documented outcomes of calls on
# a region whose writers scribble over it:
#   CorruptBookkeepingError  damaged bookkeeping was detected
#   TimeoutError             a lock stayed held (by a live writer, or a word naming one)
#   OwnerDiedError           a lock word named a dead or never-existing holder
#   RegionFullError          no free block fits (the free lists were emptied or inflated)
#   FileExistsError / FileNotFoundError   names the writer created or erased
#   ValueError from free()   the block's header no longer says it is a live allocation,
#                            or now says it belongs to a named array
VICTIM = """
import collections, ctypes, hashlib, json, os, random, sys
import mshare, mshare._shared
from mshare import CorruptBookkeepingError, OwnerDiedError, RegionFullError

# Keep the bounded waits short: a writer that plants a live holder's word costs each
# call this long, and the test makes {calls} calls.
mshare._shared.INTERNAL_LOCK_TIMEOUT = 0.3
rng = random.Random({seed})
shared = mshare.attach({shared!r})
private = mshare.create({private!r}, 1 << 16, mode=0o600, hugepages="off")
private.buf[:] = os.urandom(1 << 16)
private_digest = hashlib.sha256(private.buf).hexdigest()
canary = bytearray(os.urandom(1 << 20))
canary_digest = hashlib.sha256(canary).hexdigest()
# The first call checks the header and takes the arena's bounds from this process's own
# mapping; whatever the attacker writes afterwards must not move them.
shared.names()
print(json.dumps({{"private_addr": private.addr}}), flush=True)
sys.stdin.readline()  # the attacker runs from here on

low, high = shared.addr, shared.addr + shared.size
counts = collections.Counter()
samples = {{}}
outside = []
live = []
FREE_REFUSALS = ("not a live allocation", "belongs to a named object")
documented = (CorruptBookkeepingError, TimeoutError, OwnerDiedError, RegionFullError,
              FileExistsError, FileNotFoundError)

def check_inside(addr, nbytes, what):
    if not (low <= addr and addr + nbytes <= high):
        outside.append(f"{{what}} at 0x{{addr:x}}+{{nbytes}} outside 0x{{low:x}}-0x{{high:x}}")
        return False
    return True

for call in range({calls}):
    operation = rng.choice(["lock", "alloc", "alloc", "free", "array", "lookup", "names",
                            "delete"])
    name = f"v{{rng.randrange(24)}}"
    try:
        if operation == "lock":
            with shared.lock(timeout=0.2):
                pass
        elif operation == "alloc":
            nbytes = rng.randrange(1, 3000)
            addr = shared.alloc(nbytes, rng.choice([8, 16, 64, 512]))
            if check_inside(addr, nbytes, "alloc"):
                ctypes.memset(addr, 0x5A, nbytes)
                live.append(addr)
        elif operation == "free":
            if live:
                try:
                    shared.free(live.pop(rng.randrange(len(live))))
                except ValueError as error:
                    if not any(reason in str(error) for reason in FREE_REFUSALS):
                        raise
                    counts["ValueError from free"] += 1
                    continue
        elif operation in ("array", "lookup"):
            if operation == "array":
                array = shared.array(name, (rng.randrange(1, 100),), "int64")
            else:
                array = shared.array(name)
            if check_inside(array.ctypes.data, array.nbytes, operation):
                array[:] = 7
            del array
        elif operation == "names":
            shared.names()
        else:
            shared.delete(name)
        counts["ok"] += 1
    except documented as error:
        counts[type(error).__name__] += 1
        samples.setdefault(type(error).__name__, str(error))

intact = (hashlib.sha256(private.buf).hexdigest() == private_digest
          and hashlib.sha256(canary).hexdigest() == canary_digest)
private.close()
mshare.unlink({private!r})
shared.close()
print(json.dumps({{"counts": counts, "samples": samples, "outside": outside,
                  "intact": intact}}), flush=True)
"""


@pytest.fixture(scope="module")
def attacker_binary():
    if shutil.which("gcc") is None:
        pytest.skip("the hostile writer is built with gcc")
    directory = tempfile.mkdtemp(prefix="mshare-hostile-")
    binary = os.path.join(directory, "hostile_writer")
    source = os.path.join(os.path.dirname(__file__), "hostile_writer.c")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", binary, source,
                    f"-I{os.path.dirname(mshare.__file__)}"], check=True)
    os.chmod(directory, 0o755)
    yield binary
    shutil.rmtree(directory)


def data_object_path(region):
    """The file this process maps the region from, as the kernel reports it."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if int(fields[0].split("-")[0], 16) == region.addr:
                return fields[5].strip()
    raise AssertionError(f"region at 0x{region.addr:x} is not mapped")


def attack(region, binary, name, target, seed):
    """Run one victim under one attacker; return the victim's report and the writes made."""
    stranger = as_stranger()
    victim = start_python(
        VICTIM.format(shared=region.name, private=f"{name}-private", seed=seed,
                      calls=scaled(VICTIM_CALLS)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **as_member())
    attacker = None
    try:
        private_addr = json.loads(victim.stdout.readline())["private_addr"]
        entry = region._attachment.entry
        attacker = subprocess.Popen(
            [binary, data_object_path(region), str(entry.map_length), str(entry.data_length),
             str(entry.size), str(region.addr), str(private_addr), target, str(seed)],
            stdout=subprocess.PIPE, text=True,
            user=stranger["user"], group=stranger["group"], extra_groups=[])
        output, errors = victim.communicate("go\n", timeout=300)
    finally:
        if attacker is not None:
            attacker.send_signal(signal.SIGTERM)
            writes = json.loads(attacker.communicate(timeout=30)[0])["writes"]
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        if victim.returncode != 0:  # it never got to unlink its private region
            with contextlib.suppress(FileNotFoundError):
                mshare.unlink(f"{name}-private")
    assert victim.returncode == 0, f"victim exited {victim.returncode}:\n{errors}"
    return json.loads(output.splitlines()[-1]), writes


def run_attacks(binary, name, backend, hugepages):
    """Every target in turn, each on a fresh region: a rewritten header keeps every later
    attacher out, rightly."""
    totals = {"rounds": 0, "writes": 0, "calls": 0, "errors": {}}
    for seed, target in enumerate(TARGETS, start=1):
        shared = f"{name}-{seed}"
        region = mshare.create(shared, SHARED_SIZE[backend], mode=0o666, hugepages=hugepages)
        try:
            report, writes = attack(region, binary, shared, target, seed)
        finally:
            region.close()
            mshare.unlink(shared)
        assert report["intact"], f"{target}: the victim's private memory changed"
        assert not report["outside"], f"{target}: {report['outside'][:3]}"
        counts = report["counts"]
        assert sum(counts.values()) == scaled(VICTIM_CALLS)
        totals["rounds"] += 1
        totals["writes"] += writes
        totals["calls"] += sum(counts.values())
        for kind, count in counts.items():
            if kind != "ok":
                totals["errors"][kind] = totals["errors"].get(kind, 0) + count
        print(f"{backend} {target}: {writes} words written, {dict(counts)}, {report['samples']}")
    assert totals["writes"] > 0 and totals["errors"], "the attacks never disturbed the victim"
    print(f"{backend} total: {totals}")
    record(f"hostile writers ({backend})", **totals)


def test_hostile_writer_on_shm(attacker_binary, user_site, registry_path, name):
    run_attacks(attacker_binary, name, "shm", "off")


def test_hostile_writer_on_hugetlb(attacker_binary, user_site, registry_path, hugetlbfs, name):
    run_attacks(attacker_binary, name, "hugetlb", "hugetlb")
