"""Races and load: 64 processes racing to create (then to unlink) one name, and several
processes churning create / attach / write / verify / close / unlink over a few shared
names for a bounded time. Only documented exceptions, no lost writes, no leaks."""

import fcntl
import json
import multiprocessing
import os
import subprocess
import time

import pytest

import mshare
from consistency import assert_clean
from figures import record, scaled
from helpers import start_python

RACERS = 64


def _race(barrier, action, name):
    """In a forked racer: wait for everyone, then ``action`` once; the exit code says
    0 won, 1 lost with the documented exception, 2 anything else."""
    code = 2
    try:
        barrier.wait()
        try:
            if action == "create":
                mshare.create(name, 12345).close()
            else:
                mshare.unlink(name)
            code = 0
        except (FileExistsError if action == "create" else FileNotFoundError):
            code = 1
    finally:
        os._exit(code)


def race(action, name):
    """``RACERS`` forked processes do ``action`` at once; returns (winners, seconds)."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(RACERS + 1)
    racers = [context.Process(target=_race, args=(barrier, action, name)) for _ in range(RACERS)]
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


def test_forked_racers_create_and_unlink_one_name(registry_path, name):
    rounds = scaled(3)
    slowest = 0.0
    for round_number in range(rounds):
        target = f"{name}-{round_number}"
        (winner,), seconds = race("create", target)
        info = mshare.info(target)
        assert (info.size, info.creator_pid, info.attached) == (12345, winner, 0)
        with mshare.attach(target) as region:
            assert bytes(region.buf) == bytes(12345)
        assert_clean(registry_path)
        _, unlink_seconds = race("unlink", target)
        assert mshare.list() == []
        slowest = max(slowest, seconds, unlink_seconds)
    assert_clean(registry_path)
    assert mshare.gc().removed == []
    record("fork race", racers=RACERS, rounds=rounds, slowest_round_seconds=round(slowest, 2))


def test_independent_interpreters_race_to_create(registry_path, name, tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    holder = os.open(gate, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # everyone waits here until all have started
    racers = [start_python(f"""
        import fcntl, os, mshare
        print("ready", flush=True)
        fcntl.flock(os.open({str(gate)!r}, os.O_RDONLY), fcntl.LOCK_SH)
        try:
            mshare.create({name!r}, 4096).close()
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
    assert [info.name for info in mshare.list()] == [name]
    mshare.unlink(name)
    assert_clean(registry_path)
    record("interpreter race", racers=RACERS, seconds=round(seconds, 2))


WORKER = """
    import json, random, struct, sys, time, mshare

    index, seconds, names, slots = {index}, {seconds}, {names!r}, {slots}
    rng = random.Random(index)
    ledger = mshare.attach("ledger")
    counts = {{"cycles": 0, "created": 0, "attached": 0, "unlinked": 0,
              "FileExistsError": 0, "FileNotFoundError": 0}}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        name = rng.choice(names)
        try:
            region = mshare.create(name, 8 * slots, mode=0o600)
            counts["created"] += 1
        except FileExistsError:
            counts["FileExistsError"] += 1
            try:
                region = mshare.attach(name)
                counts["attached"] += 1
            except FileNotFoundError:
                counts["FileNotFoundError"] += 1
                continue
        with region:
            value = index << 32 | counts["cycles"]
            struct.pack_into("<Q", region.buf, 8 * index, value)
            for slot, (seen,) in enumerate(struct.iter_unpack("<Q", region.buf)):
                if slot == index:
                    assert seen == value, (name, seen, value)
                else:
                    assert seen == 0 or seen >> 32 == slot, (name, slot, seen)
        counts["cycles"] += 1
        struct.pack_into("<Q", ledger.buf, 8 * index, counts["cycles"])
        if rng.random() < 0.3:
            try:
                mshare.unlink(name)
                counts["unlinked"] += 1
            except FileNotFoundError:
                counts["FileNotFoundError"] += 1
    ledger.close()
    print(json.dumps(counts))
"""


def test_soak_of_several_processes_over_shared_names(registry_path):
    workers, seconds = 4, scaled(6)
    names = [f"soak-{index}" for index in range(3)]
    ledger = mshare.create("ledger", 8 * workers)
    processes = [start_python(WORKER.format(index=index, seconds=seconds, names=names, slots=workers),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for index in range(workers)]
    results = []
    for process in processes:
        output, errors = process.communicate(timeout=seconds + 120)
        assert process.returncode == 0, errors
        results.append(json.loads(output))
    # No lost writes: each worker's count of finished cycles reached the shared ledger.
    assert [int.from_bytes(ledger.buf[8 * index:8 * index + 8], "little")
            for index in range(workers)] == [result["cycles"] for result in results]
    ledger.close()
    mshare.unlink("ledger")
    for name in names:
        try:
            mshare.unlink(name)
        except FileNotFoundError:
            pass
    assert mshare.gc().removed == []  # nothing leaked
    assert assert_clean(registry_path) == {}
    totals = {key: sum(result[key] for result in results) for key in results[0]}
    assert totals["created"] > 0 and totals["attached"] > 0 and totals["unlinked"] > 0
    record("soak", processes=workers, names=len(names), seconds=seconds, **totals)


@pytest.fixture(autouse=True)
def _no_stray_children():
    yield
    assert multiprocessing.active_children() == []
