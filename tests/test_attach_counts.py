"""Attach counts, as msharefs keeps them: one per live process that maps the region,
whatever way it got there (attach, create, fork), dropped by the kernel when the
process dies however it dies; shown by info(), list() and ``mshare ls``."""

import os
import signal
import subprocess
import sys

import mshare
from figures import record
from helpers import run_python, start_python

HOLD = """
    import mshare, sys
    regions = [mshare.attach({name!r}, readonly={readonly})]
    if {twice}:
        regions.append(mshare.attach({name!r}))
    print("attached", flush=True)
    sys.stdin.read()
"""


def hold(name, readonly=False, twice=False):
    """A process that attaches ``name`` (``twice``: two handles) and waits for stdin."""
    process = start_python(HOLD.format(name=name, readonly=readonly, twice=twice),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "attached\n"
    return process


def release(process):
    process.stdin.close()
    assert process.wait(timeout=30) == 0


def attached(name):
    return mshare.info(name).attached


def ls_count(name):
    output = run_python("import sys; from mshare.cli import main; sys.exit(main(['ls']))").stdout
    line = next(line for line in output.splitlines() if line.endswith(" " + name))
    return int(line.split()[-2])


def test_counts_follow_processes_that_come_and_go(registry_path, name):
    creator = mshare.create(name, 4096)
    assert attached(name) == 1
    holders = [hold(name, readonly=index % 2 == 0, twice=index == 1) for index in range(4)]
    assert attached(name) == 5 == ls_count(name)
    assert [info.attached for info in mshare.list() if info.name == name] == [5]
    killed = holders.pop()
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    killed.stdout.close()
    killed.stdin.close()
    assert attached(name) == 4
    for process in holders:
        release(process)
        process.stdout.close()
    assert attached(name) == 1
    creator.close()
    assert attached(name) == 0 == ls_count(name)
    mshare.unlink(name)
    record("attach counts", processes=5, killed=1)


def test_forked_children_count_each_and_drop_on_exit(registry_path, name):
    region = mshare.create(name, 4096)
    children = []
    ready, go = os.pipe(), os.pipe()
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            try:
                os.write(ready[1], b"x")
                os.read(go[0], 1)
            finally:
                os._exit(0)
        children.append(pid)
    for _ in children:
        os.read(ready[0], 1)
    assert attached(name) == 4
    os.write(go[1], b"xxx")
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    for fd in (*ready, *go):
        os.close(fd)
    assert attached(name) == 1
    region.close()
    mshare.unlink(name)


def test_a_process_mapping_an_unlinked_region_is_still_counted(registry_path, name):
    mshare.create(name, 4096).close()
    holder = hold(name)
    mshare.unlink(name)
    kept = [finding.reason for finding in mshare.gc().kept]
    assert kept == ["data object gone, still mapped by 1 process(es)"]
    release(holder)
    holder.stdout.close()
    assert mshare.gc().kept == []


def test_exec_drops_the_mark(registry_path, name):
    # Descriptors are close-on-exec: a program exec'd from an attached process does not
    # map the region and must not count.
    region = mshare.create(name, 4096)
    running, told = os.pipe()
    os.set_inheritable(told, True)
    pid = os.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-c",
                                  "import os, sys, time; os.write(int(sys.argv[1]), b'x'); time.sleep(60)",
                                  str(told)])
    try:
        os.close(told)
        assert os.read(running, 1) == b"x"  # the new program runs: exec has happened
        assert attached(name) == 1
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(running)
    region.close()
    mshare.unlink(name)
