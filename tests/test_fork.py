"""fork() while other threads are inside mshare: a child never holds a lock that a
parent thread took (the registry ``flock``, an exclusive range-file lock, the attachment
table's lock), and no parent call ever waits for a child."""

import os
import random
import select
import signal
import threading

import pytest

import mshare
from figures import record, scaled
from mshare import attachments
from mshare.errors import RegionFullError

FORKS = scaled(150)
# Generous: only a child or a registry call that hangs comes anywhere near it.
HANG_GUARD = 120


def worker_loop(stop, names, errors, counts):
    """create/attach, lock, alloc/free, close and unlink over a few names until ``stop``."""
    chooser = random.Random()
    try:
        while not stop.is_set():
            name = chooser.choice(names)
            try:
                region = mshare.create(name, 1 << 16)
            except FileExistsError:
                try:
                    region = mshare.attach(name)
                except FileNotFoundError:
                    continue
            with region:
                with region.lock():
                    counts[0] += 1
                try:
                    region.free(region.alloc(64))
                except RegionFullError:
                    pass
            if chooser.random() < 0.3:
                try:
                    mshare.unlink(name)
                except FileNotFoundError:
                    pass
    except BaseException as error:  # reported by the test
        errors.append(error)


def child_holds_nothing(registry_path):
    """In the child: 0 if it holds no lock but its own attach marks, else why not (3: a
    descriptor of the registry directory, whose flock is the registry lock)."""
    registry = os.path.realpath(registry_path)
    own_marks = {attachment.mark.fd for attachment in attachments.live()}
    for entry in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{entry}")
            with open(f"/proc/self/fdinfo/{entry}") as fdinfo:
                locked = "lock:" in fdinfo.read()
        except OSError:
            continue
        if target == registry:
            return 3
        if locked and int(entry) not in own_marks:
            return 4
    return 0


def run_child(registry_path, go):
    code = child_holds_nothing(registry_path)
    if code:
        return code
    os.read(go, 1)  # the parent's registry call is done
    # The table lock and the registry are free for the child's own calls.
    name = f"child-{os.getpid()}"
    with mshare.create(name, 4096) as region:
        region.buf[0] = 7
        with mshare.attach(name) as again:
            if again.buf[0] != 7:
                return 5
    mshare.unlink(name)
    return 0


def finishes(call):
    """True when ``call()`` returns within the hang guard (run in a helper thread)."""
    done = threading.Event()

    def run():
        call()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(HANG_GUARD)


def exit_code_of(pid):
    """The child's exit code, or ``None`` (after killing it) when it hangs."""
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], HANG_GUARD)
    finally:
        os.close(pidfd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.parametrize("threads", [1, 4])
def test_fork_storm_children_hold_no_parent_lock(registry_path, threads):
    names = [f"storm-{index}" for index in range(3)]
    stop = threading.Event()
    errors, counts = [], [0]
    workers = [threading.Thread(target=worker_loop, args=(stop, names, errors, counts))
               for _ in range(threads)]
    for worker in workers:
        worker.start()
    failures = []
    try:
        for index in range(FORKS):
            go_read, go_write = os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(go_write)
                    code = run_child(registry_path, go_read)
                finally:
                    os._exit(code)
            os.close(go_read)
            name = f"parent-{index}"
            # Needs the exclusive registry lock while the child lives and waits.
            unblocked = finishes(lambda: (mshare.create(name, 4096).close(), mshare.unlink(name)))
            try:
                os.write(go_write, b"x")
            except BrokenPipeError:
                pass  # the child already failed; its exit code says why
            os.close(go_write)
            code = exit_code_of(pid)
            if not unblocked or code != 0:
                failures.append((index, unblocked, code))
                break
    finally:
        stop.set()
        for worker in workers:
            worker.join(HANG_GUARD)
    assert failures == [], "(fork, parent call finished, child exit code)"
    assert errors == []
    assert counts[0] > 0
    record("fork storm", threads=threads, forks=FORKS, worker_cycles=counts[0])
    for name in names:
        try:
            mshare.unlink(name)
        except FileNotFoundError:
            pass


def mappings_the_table_does_not_know():
    """In the child: the arena's mappings (or address probes) that no attachment of its
    table accounts for, as /proc/self/maps lists them."""
    arena_start, arena_end = mshare.addresses.arena()
    known = [(attachment.entry.addr, attachment.entry.addr + attachment.entry.map_length)
             for attachment in attachments.live()]
    unknown = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(bound, 16) for bound in line.split()[0].split("-"))
            if arena_start <= start < arena_end and not any(
                    low <= start and end <= high for low, high in known):
                unknown.append(line.strip())
    return unknown


def test_a_child_forked_during_another_threads_create_knows_every_mapping(registry_path):
    """A thread creates, unlinks and closes a region in a loop while the main thread
    forks: no child inherits a mapping (or the address probe before it) that its table
    does not know, which no attach mark would keep reserved."""
    stop = threading.Event()
    errors = []

    def churn():
        try:
            while not stop.is_set():
                region = mshare.create("churned", 1 << 16)
                mshare.unlink("churned")
                region.close()
        except BaseException as error:  # reported by the test
            errors.append(error)

    churner = threading.Thread(target=churn)
    churner.start()
    seen = []
    try:
        for _ in range(FORKS):
            reader, writer = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(reader)
                try:
                    os.write(writer, "\n".join(mappings_the_table_does_not_know()).encode())
                finally:
                    os._exit(0)
            os.close(writer)
            # The report is small enough for the pipe: the child never waits on it.
            assert exit_code_of(pid) == 0
            with os.fdopen(reader, "rb") as report:
                found = report.read().decode()
            if found:
                seen.append(found)
    finally:
        stop.set()
        churner.join(HANG_GUARD)
    assert not errors, errors
    assert not seen, f"{len(seen)} of {FORKS} children: {seen[:3]}"
