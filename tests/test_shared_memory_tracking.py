"""track=True with real processes: a program's blocks are unlinked once the whole program
has ended without unlinking them, however it ended; attachers never unlink anything;
track=False never removes a block.

A program's tracker shares its stderr, so reading the program's stderr to its end waits
for the tracker's cleanup too: no test waits for a time.
"""

import multiprocessing
import signal
import subprocess
import sys
import textwrap

import pytest

import mshare
from mshare import shared_memory
from mshare._shared_memory_tracker import LEAK_WARNING

from helpers import run_python, start_python

CREATOR = """
    import os, sys
    from mshare import shared_memory
    block = shared_memory.SharedMemory(create=True, size=4096, track={track})
    block.buf[:5] = b"alive"
    print(block.name, flush=True)
    how = sys.stdin.readline().strip()
    if how == "exception":
        raise RuntimeError("the program fails")
    if how == "os._exit":
        os._exit(3)
    if how == "unlink":
        block.close()
        block.unlink()
"""


def start_creator(track=True):
    """A program that created one block and waits for how to end; and the block's name."""
    program = start_python(CREATOR.format(track=track), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    name = program.stdout.readline().strip()
    assert mshare.info(name).creator_pid == program.pid
    return program, name


def end(program, how):
    """End ``program`` as ``how`` says; its stderr, read to the end."""
    if how in ("SIGKILL", "SIGTERM"):
        program.send_signal(getattr(signal, how))
        how = ""
    _, stderr = program.communicate(how + "\n", timeout=60)
    return stderr


def leak_warning(count):
    return LEAK_WARNING.format(count=count)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "exception", "os._exit", "exit"])
def test_block_goes_when_its_creator_ends_without_unlinking(registry_path, how):
    program, name = start_creator()
    stderr = end(program, how)
    with pytest.raises(FileNotFoundError):
        mshare.info(name)
    assert leak_warning(1) in stderr
    assert name in stderr


def test_blocks_go_when_their_creator_is_killed_the_instant_create_returns(registry_path):
    """Registration waits for no reply from the tracker: what the socket took before the
    kill is still read by the tracker, whatever the order, the last block included."""
    result = run_python("""
        import os, signal
        from mshare import shared_memory
        for _ in range(20):
            block = shared_memory.SharedMemory(create=True, size=4096)
            os.write(1, (block.name + "\\n").encode())
        os.kill(os.getpid(), signal.SIGKILL)
    """, check=False)
    assert result.returncode == -signal.SIGKILL
    names = result.stdout.split()
    assert len(names) == 20
    assert leak_warning(20) in result.stderr
    for name in names:
        with pytest.raises(FileNotFoundError):
            mshare.info(name)


def test_a_program_whose_tracker_was_killed_gets_a_new_one(registry_path):
    """The tracker killed (the OOM killer, say) mid-program, with SIGPIPE at its default
    action: the next create warns and starts a new tracker instead of failing (or dying),
    and the new tracker unlinks that block when the program is killed."""
    result = run_python("""
        import os, signal, warnings
        from mshare import shared_memory
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        first = shared_memory.SharedMemory(create=True, size=4096)
        # The tracker: the one other process started for this test's registry.
        def tracker_pids():
            found = []
            for pid in set(filter(str.isdigit, os.listdir("/proc"))) - {str(os.getpid())}:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        command = f.read()
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        environment = f.read().split(b"\\0")
                except OSError:
                    continue
                if (b"_shared_memory_tracker import main" in command
                        and os.environ["MSHARE_ROOT"].encode() in
                        [entry.partition(b"=")[2] for entry in environment]):
                    found.append(int(pid))
            return found
        [tracker_pid] = tracker_pids()
        os.kill(tracker_pid, signal.SIGKILL)
        while True:  # until the kernel has closed the tracker's end
            try:
                os.kill(tracker_pid, 0)
            except ProcessLookupError:
                break
            os.sched_yield()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            second = shared_memory.SharedMemory(create=True, size=4096)
        os.write(1, f"{first.name} {second.name} {len(caught)}\\n".encode())
        os.write(1, (str(caught[0].message) + "\\n").encode())
        os.kill(os.getpid(), signal.SIGKILL)
    """, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr
    names, warning = result.stdout.splitlines()
    first, second, warnings_caught = names.split()
    assert warnings_caught == "1"
    assert "tracker is gone" in warning
    assert leak_warning(1) in result.stderr and second in result.stderr
    with pytest.raises(FileNotFoundError):
        mshare.info(second)
    # The first block's tracker died with it: the block stays, as the warning said.
    assert mshare.info(first).name == first
    mshare.unlink(first)


def test_creator_that_unlinks_leaves_nothing_to_report(registry_path):
    program, name = start_creator()
    stderr = end(program, "unlink")
    assert program.returncode == 0
    assert stderr == ""
    with pytest.raises(FileNotFoundError):
        mshare.info(name)


@pytest.mark.parametrize("how", ["SIGKILL", "exception", "exit"])
def test_untracked_block_outlives_its_creator(registry_path, how):
    program, name = start_creator(track=False)
    stderr = end(program, how)
    assert "leaked" not in stderr
    survivor = shared_memory.SharedMemory(name)
    try:
        assert bytes(survivor.buf[:5]) == b"alive"
    finally:
        survivor.close()
        survivor.unlink()


@pytest.mark.parametrize("how", ["SIGKILL", "exception", "exit"])
def test_an_attacher_that_exits_never_unlinks(registry_path, how):
    block = shared_memory.SharedMemory(create=True, size=4096)
    try:
        attacher = start_python(f"""
            import sys
            from mshare import shared_memory
            block = shared_memory.SharedMemory({block.name!r}, track=True)
            block.buf[:8] = b"attached"
            print("attached", flush=True)
            if sys.stdin.readline().strip() == "exception":
                raise RuntimeError("the attacher fails")
            block.close()
        """, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert attacher.stdout.readline() == "attached\n"
        stderr = end(attacher, how)
        assert "leaked" not in stderr
        assert mshare.info(block.name).name == block.name
        assert bytes(block.buf[:8]) == b"attached"
    finally:
        block.close()
        block.unlink()


def _write_pid(block, index):
    import os

    block.buf[index] = os.getpid() % 251 + 1
    address = block.addr
    block.close()
    return address


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_that_attach_by_unpickling_never_unlink(registry_path, method):
    block = shared_memory.SharedMemory(create=True, size=64)
    try:
        # One task per worker: every worker exits after attaching.
        with multiprocessing.get_context(method).Pool(2, maxtasksperchild=1) as pool:
            addresses = pool.starmap(_write_pid, [(block, index) for index in range(6)])
        assert addresses == [block.addr] * 6
        assert all(block.buf[index] != 0 for index in range(6))
        assert mshare.info(block.name).name == block.name
    finally:
        block.close()
        block.unlink()


PROGRAM_WITH_CREATING_WORKER = """
    import multiprocessing
    from mshare import shared_memory

    def make_block():
        block = shared_memory.SharedMemory(create=True, size=4096)
        block.buf[:6] = b"worker"
        return block

    if __name__ == "__main__":
        with multiprocessing.get_context({method!r}).Pool(1, maxtasksperchild=1) as pool:
            block = pool.apply(make_block)
            pool.close()
            pool.join()
        # The worker that created the block has exited; the program still runs.
        again = shared_memory.SharedMemory(block.name)
        print(block.name, bytes(again.buf[:6]).decode(), flush=True)
        again.close()
        block.close()
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_block_a_worker_created_lives_until_the_whole_program_ends(registry_path, tmp_path,
                                                                     method):
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(PROGRAM_WITH_CREATING_WORKER.format(method=method)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    name, contents = result.stdout.split()
    assert contents == "worker"
    with pytest.raises(FileNotFoundError):
        mshare.info(name)
    assert leak_warning(1) in result.stderr


def test_manager_blocks_are_mshare_regions_unlinked_at_shutdown(registry_path):
    with shared_memory.SharedMemoryManager() as manager:
        block = manager.SharedMemory(size=128)
        numbers = manager.ShareableList(range(5))
        names = [block.name, numbers.shm.name]
        assert sorted(region.name for region in mshare.list()) == sorted(names)
        block.close()
        numbers.shm.close()
    assert mshare.list() == []


def test_a_program_whose_manager_cleaned_up_reports_no_leak(registry_path):
    result = run_python("""
        from mshare import shared_memory
        with shared_memory.SharedMemoryManager() as manager:
            numbers = manager.ShareableList(range(10))
            numbers.shm.close()
    """)
    assert result.stderr == ""


def test_a_program_cannot_have_its_tracker_unlink_a_block_it_did_not_create(registry_path):
    block = shared_memory.SharedMemory(create=True, size=4096, track=False)
    created = mshare.info(block.name).created
    try:
        result = run_python(f"""
            from mshare import _shared_memory_tracker
            _shared_memory_tracker.register({block.name!r}, {registry_path!r}, {block.addr!r},
                                            {created!r})
        """)
        assert "leaked" not in result.stderr
        assert mshare.info(block.name).name == block.name
    finally:
        block.close()
        block.unlink()
