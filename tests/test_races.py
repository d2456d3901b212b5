"""Races and load: 64 processes racing to create (then to unlink) one name, and several
processes churning create / attach / write / verify / close / unlink over a few shared
names for a fixed number of cycles, on every backend. Only documented exceptions, no
lost writes (a ledger of every write, judged by another process), no leaks."""

import fcntl
import json
import multiprocessing
import os
import struct
import subprocess
import time

import pytest

import mshare
from consistency import assert_clean
from figures import record, scaled
from helpers import start_python

RACERS = 64


def _race(barrier, action, name, backend):
    """In a forked racer: wait for everyone, then ``action`` once; the exit code says
    0 won, 1 lost with the documented exception, 2 anything else."""
    code = 2
    try:
        barrier.wait()
        try:
            if action == "create":
                mshare.create(name, backend.size(12345), hugepages=backend.hugepages).close()
            else:
                mshare.unlink(name)
            code = 0
        except (FileExistsError if action == "create" else FileNotFoundError):
            code = 1
    finally:
        os._exit(code)


def race(action, name, backend):
    """``RACERS`` forked processes do ``action`` at once; returns (winners, seconds)."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(RACERS + 1)
    racers = [context.Process(target=_race, args=(barrier, action, name, backend)) for _ in range(RACERS)]
    for racer in racers:
        racer.start()
    barrier.wait(timeout=60)
    started = time.monotonic()
    for racer in racers:
        racer.join(timeout=60)
    seconds = time.monotonic() - started
    codes = sorted(racer.exitcode for racer in racers)
    assert codes == [0] + [1] * (RACERS - 1), codes
    return [racer.pid for racer in racers if racer.exitcode == 0], seconds


def test_forked_racers_create_and_unlink_one_name(registry_path, name, backend):
    rounds = scaled(3)
    slowest = 0.0
    for round_number in range(rounds):
        target = f"{name}-{round_number}"
        (winner,), seconds = race("create", target, backend)
        info = mshare.info(target)
        size = backend.size(12345)
        assert (info.size, info.backend, info.creator_pid, info.attached) == (size, backend.name, winner, 0)
        with mshare.attach(target) as region:
            assert bytes(region.buf) == bytes(size)
        assert_clean(registry_path)
        _, unlink_seconds = race("unlink", target, backend)
        assert mshare.list() == []
        slowest = max(slowest, seconds, unlink_seconds)
    assert_clean(registry_path)
    assert mshare.gc().removed == []
    record("fork race", backend=backend.name, racers=RACERS, rounds=rounds, slowest_round_seconds=round(slowest, 2))


def test_independent_interpreters_race_to_create(registry_path, name, tmp_path, backend):
    gate = tmp_path / "gate"
    gate.touch()
    holder = os.open(gate, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # everyone waits here until all have started
    racers = [start_python(f"""
        import fcntl, os, mshare
        print("ready", flush=True)
        fcntl.flock(os.open({str(gate)!r}, os.O_RDONLY), fcntl.LOCK_SH)
        try:
            {backend.create_code(name, 4096)}.close()
            print("won")
        except FileExistsError:
            print("lost")
    """, stdout=subprocess.PIPE, text=True) for _ in range(RACERS)]
    for racer in racers:
        assert racer.stdout.readline() == "ready\n"
    os.close(holder)
    started = time.monotonic()
    outcomes = sorted(racer.communicate(timeout=120)[0].strip() for racer in racers)
    seconds = time.monotonic() - started
    assert [racer.returncode for racer in racers] == [0] * RACERS
    assert outcomes == ["lost"] * (RACERS - 1) + ["won"]
    assert [(info.name, info.backend) for info in mshare.list()] == [(name, backend.name)]
    mshare.unlink(name)
    assert_clean(registry_path)
    record("interpreter race", backend=backend.name, racers=RACERS, seconds=round(seconds, 2))


# One ledger record per cycle of a worker: what it did, to which incarnation of which
# name, the value it wrote into its own slot and the value it found there first.
RECORD = "<IIQdQQ"
RECORD_SIZE = 40
CREATED, ATTACHED, MISSED = 1, 2, 3

WORKER = """
    import random, struct, mshare

    index, cycles, names, slots = {index}, {cycles}, {names!r}, {slots}
    hugepages, size = {hugepages!r}, {size}
    rng = random.Random(index)
    ledger = mshare.attach("ledger")

    def incarnation(name, region):
        # While this process maps the region its address range cannot be reused, so an
        # entry with this address is this very incarnation; its creation time tells it
        # apart from earlier ones at the same address. 0.0: already unlinked, unknown.
        try:
            info = mshare.info(name)
        except FileNotFoundError:
            return 0.0
        return info.created if info.addr == region.addr else 0.0

    for cycle in range(cycles):
        name_index = rng.randrange(len(names))
        name = names[name_index]
        try:
            region, kind = mshare.create(name, size, mode=0o600, hugepages=hugepages), {created}
        except FileExistsError:
            try:
                region, kind = mshare.attach(name), {attached}
            except FileNotFoundError:
                struct.pack_into({record!r}, ledger.buf, {record_size} * (index * cycles + cycle),
                                 {missed}, name_index, 0, 0.0, 0, 0)
                continue
        with region:
            value = index << 32 | (cycle + 1)
            (found,) = struct.unpack_from("<Q", region.buf, 8 * index)
            struct.pack_into("<Q", region.buf, 8 * index, value)
            for slot, (seen,) in enumerate(struct.iter_unpack("<Q", region.buf[:8 * slots])):
                assert seen == 0 or seen >> 32 == slot, (name, slot, seen)  # nothing misplaced
            struct.pack_into({record!r}, ledger.buf, {record_size} * (index * cycles + cycle),
                             kind, name_index, region.addr, incarnation(name, region), value, found)
        if rng.random() < 0.3:
            try:
                mshare.unlink(name)
            except FileNotFoundError:
                pass
    ledger.close()
"""

# Another process judges the ledger: every cycle recorded, and every value a worker
# found in its own slot of an incarnation is exactly the last one it wrote there (0
# only before its first write), so a lost or stale write shows. Regions still named
# must hold each worker's last write.
CHECKER = """
    import json, struct, mshare

    workers, cycles, names = {workers}, {cycles}, {names!r}
    ledger = mshare.attach("ledger", readonly=True)
    records = [[struct.unpack_from({record!r}, ledger.buf, {record_size} * (worker * cycles + cycle))
                for cycle in range(cycles)] for worker in range(workers)]
    problems, last_write = [], {{}}
    kinds = {{"created": 0, "attached": 0, "missed": 0}}
    for worker, worker_records in enumerate(records):
        for cycle, (kind, name_index, addr, created, written, found) in enumerate(worker_records):
            if kind not in ({created}, {attached}, {missed}):
                problems.append(["unrecorded cycle", worker, cycle])
                continue
            kinds[("created", "attached", "missed")[kind - 1]] += 1
            if kind == {missed}:
                continue
            if written != worker << 32 | (cycle + 1):
                problems.append(["wrong value recorded", worker, cycle, written])
            if created == 0.0:
                continue
            key = (worker, name_index, addr, created)
            if found != last_write.get(key, 0):
                problems.append(["lost write", worker, cycle, found, last_write.get(key, 0)])
            last_write[key] = written
    surviving = 0
    for name_index, name in enumerate(names):
        try:
            region = mshare.attach(name, readonly=True)
        except FileNotFoundError:
            continue
        with region:
            created = mshare.info(name).created
            surviving += 1
            for worker in range(workers):
                (held,) = struct.unpack_from("<Q", region.buf, 8 * worker)
                expected = last_write.get((worker, name_index, region.addr, created), 0)
                if held != expected:
                    problems.append(["final write lost", name, worker, held, expected])
    ledger.close()
    print(json.dumps({{"problems": problems, "surviving": surviving, **kinds}}))
"""


def test_soak_of_several_processes_over_shared_names(registry_path, backend):
    workers, cycles = 4, scaled(300)
    names = [f"soak-{index}" for index in range(3)]
    ledger = mshare.create("ledger", RECORD_SIZE * workers * cycles)
    assert struct.calcsize(RECORD) == RECORD_SIZE
    shared = dict(record=RECORD, record_size=RECORD_SIZE, created=CREATED, attached=ATTACHED,
                  missed=MISSED, names=names, cycles=cycles)
    processes = [start_python(WORKER.format(index=index, slots=workers, hugepages=backend.hugepages,
                                            size=backend.size(8 * workers), **shared),
                              stderr=subprocess.PIPE, text=True)
                 for index in range(workers)]
    for process in processes:
        _, errors = process.communicate(timeout=600)
        assert process.returncode == 0, errors
    checker = start_python(CHECKER.format(workers=workers, **shared),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output, errors = checker.communicate(timeout=120)
    assert checker.returncode == 0, errors
    verdict = json.loads(output)
    assert verdict["problems"] == []
    assert verdict["created"] > 0 and verdict["attached"] > 0
    assert verdict["created"] + verdict["attached"] + verdict["missed"] == workers * cycles
    ledger.close()
    mshare.unlink("ledger")
    for name in names:
        try:
            mshare.unlink(name)
        except FileNotFoundError:
            pass
    assert mshare.gc().removed == []  # nothing leaked
    assert assert_clean(registry_path) == {}
    record("soak", backend=backend.name, processes=workers, names=len(names), cycles=cycles,
           checked_writes=verdict["created"] + verdict["attached"], surviving=verdict["surviving"])


@pytest.fixture(autouse=True)
def _no_stray_children():
    yield
    assert multiprocessing.active_children() == []
