"""Real processes: independent interpreters, spawn/forkserver pools, fork, pointers."""

import fcntl
import multiprocessing
import os
import signal
import subprocess

import pytest

import mshare

from helpers import run_python, shm_objects_of, start_python
from mshare.registry import Registry


def test_independent_process_sees_data_at_same_address(registry_path, name):
    with mshare.create(name, 1 << 20) as region:
        region.buf[:12] = b"from creator"
        result = run_python(f"""
            import mshare
            region = mshare.attach({name!r})
            print(hex(region.addr), bytes(region.buf[:12]).decode())
            region.buf[100:110] = b"from child"
            region.close()
        """)
        assert result.stdout.split() == [hex(region.addr), "from", "creator"]
        assert bytes(region.buf[100:110]) == b"from child"
    mshare.unlink(name)


def _report(region, index):
    # Runs in a pool worker: the Region arrived pickled and attached itself by name.
    with region:
        region.buf[index] = index + 1
        return region.addr, region.readonly, os.getpid()


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_region_travels_through_pools_by_pickle(registry_path, name, method):
    with mshare.create(name, 64) as region:
        context = multiprocessing.get_context(method)
        with context.Pool(2) as pool:
            results = pool.starmap(_report, [(region, i) for i in range(4)])
        assert {addr for addr, _, _ in results} == {region.addr}
        assert all(pid != os.getpid() for _, _, pid in results)
        assert bytes(region.buf[:4]) == bytes([1, 2, 3, 4])
    mshare.unlink(name)


def _readonly_report(region):
    with region:
        try:
            region.buf[0] = 1
        except TypeError:
            return "read-only", region.readonly


def test_pickled_readonly_region_stays_readonly(registry_path, name):
    mshare.create(name, 64).close()
    with mshare.attach(name, readonly=True) as reader:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            assert pool.apply(_readonly_report, (reader,)) == ("read-only", True)
    mshare.unlink(name)


def test_forked_child_uses_inherited_region_and_is_counted(registry_path, name):
    region = mshare.create(name, 4096)
    child_wrote, writer = os.pipe()
    parent_counted, tell_child = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: same mapping, same address, its own attach mark
        try:
            region.buf[:5] = b"child"
            os.write(writer, b"x")
            os.read(parent_counted, 1)  # keep the mapping until the parent has counted it
            region.close()  # unmaps only in the child
        finally:
            os._exit(0)
    os.read(child_wrote, 1)
    assert mshare.info(name).attached == 2
    os.write(tell_child, b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert bytes(region.buf[:5]) == b"child"
    assert mshare.info(name).attached == 1
    region.close()
    assert mshare.info(name).attached == 0
    mshare.unlink(name)


def test_raw_pointers_are_valid_in_another_process(registry_path, name):
    builder = f"""
        import ctypes, mshare

        class Node(ctypes.Structure):
            pass
        Node._fields_ = [("value", ctypes.c_int64), ("next", ctypes.POINTER(Node))]

        region = mshare.create({name!r}, 1 << 16)
        nodes = [Node.from_address(region.addr + 64 + i * ctypes.sizeof(Node)) for i in range(5)]
        for i, node in enumerate(nodes):
            node.value = (i + 1) * 11
            node.next = ctypes.pointer(nodes[i + 1]) if i + 1 < len(nodes) else None
        # The head pointer lives at offset 0: an absolute address, no translation.
        ctypes.c_uint64.from_address(region.addr).value = ctypes.addressof(nodes[0])
        del nodes
        region.close()
    """
    walker = f"""
        import ctypes, mshare

        class Node(ctypes.Structure):
            pass
        Node._fields_ = [("value", ctypes.c_int64), ("next", ctypes.POINTER(Node))]

        region = mshare.attach({name!r}, readonly=True)
        node = ctypes.cast(ctypes.c_uint64.from_address(region.addr).value, ctypes.POINTER(Node))
        values = []
        while node:
            values.append(node.contents.value)
            node = node.contents.next
        print(*values)
        del node
        region.close()
    """
    run_python(builder)
    assert run_python(walker).stdout.split() == ["11", "22", "33", "44", "55"]
    mshare.unlink(name)


def test_unlink_elsewhere_keeps_mapping_valid_and_name_reusable(registry_path, name):
    holder = mshare.create(name, 64)
    holder.buf[:4] = b"keep"
    run_python(f"import mshare; mshare.unlink({name!r})")
    assert bytes(holder.buf[:4]) == b"keep"
    result = run_python(f"""
        import mshare
        with mshare.create({name!r}, 64) as region:
            region.buf[:3] = b"new"
            print(hex(region.addr))
    """)
    assert int(result.stdout, 16) != holder.addr
    with mshare.attach(name) as fresh:
        assert bytes(fresh.buf[:3]) == b"new"
    holder.close()
    mshare.unlink(name)


def test_attach_refuses_an_occupied_address_and_leaves_it_alone(registry_path, name):
    with mshare.create(name, 64) as region:
        addr = region.addr
    result = run_python(f"""
        import ctypes, mmap, mshare
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        MAP_FIXED_NOREPLACE = 0x100000
        placed = libc.mmap({addr}, 4096, mmap.PROT_READ | mmap.PROT_WRITE,
                           mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        assert placed == {addr}, placed
        ctypes.memmove(placed, b"mine", 4)
        try:
            mshare.attach({name!r})
        except mshare.AddressConflictError as error:
            print("conflict:", error)
        print(ctypes.string_at(placed, 4).decode())
    """)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("conflict:") and f"{addr:x}" in lines[0] and "[anonymous]" in lines[0]
    assert lines[1] == "mine"
    assert mshare.info(name).attached == 0
    mshare.unlink(name)


def test_creation_race_has_exactly_one_winner(registry_path, name, tmp_path):
    racers = 16
    gate = tmp_path / "gate"
    gate.touch()
    holder = os.open(gate, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # every racer waits here until all have started
    code = f"""
        import fcntl, os, mshare
        print("ready", flush=True)
        fcntl.flock(os.open({str(gate)!r}, os.O_RDONLY), fcntl.LOCK_SH)
        try:
            region = mshare.create({name!r}, 4096)
        except FileExistsError:
            print("lost")
        else:
            region.buf[:8] = os.getpid().to_bytes(8, "little")
            print("won", os.getpid())
            region.close()
    """
    children = [start_python(code, stdout=subprocess.PIPE, text=True) for _ in range(racers)]
    for child in children:
        assert child.stdout.readline() == "ready\n"
    os.close(holder)
    outputs = [child.communicate(timeout=60)[0].split() for child in children]
    assert all(child.returncode == 0 for child in children)
    winners = [out for out in outputs if out[0] == "won"]
    assert len(winners) == 1 and sum(out == ["lost"] for out in outputs) == racers - 1
    with mshare.attach(name) as region:
        assert int.from_bytes(region.buf[:8], "little") == int(winners[0][1])
    mshare.unlink(name)


def test_process_killed_during_create_leaves_no_visible_entry(registry_path, name):
    # The child is stopped (SIGSTOP) the moment its data object appears, which is before
    # its entry can be published; then the registry is looked at and the child killed.
    # No clock decides where it stops: the create's own progress does.
    size = 512 << 20  # reserving this keeps create busy long after the object appears
    mshare.list()  # makes the registry, and with it the id its data objects carry
    with Registry(registry_path) as registry:
        registry_id = registry.registry_id
    seen_midway = 0
    for _ in range(5):
        child = start_python(f"import mshare; mshare.create({name!r}, {size}, hugepages='off').close()")
        while not shm_objects_of(registry_id) and child.poll() is None:
            pass
        child.send_signal(signal.SIGSTOP)
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        stopped = os.WIFSTOPPED(status)
        if not stopped:  # it finished first, and waitpid has reaped it
            child.returncode = os.waitstatus_to_exitcode(status)
        published = name in os.listdir(registry_path)
        child.kill()
        child.wait()
        try:
            region = mshare.attach(name)
        except FileNotFoundError:
            assert not published
        else:
            assert published and region.size == size
            region.close()
            mshare.unlink(name)
        seen_midway += stopped and not published
        mshare.gc()  # what the killed create left, so the next attempt starts clean
    assert seen_midway > 0, "the child never stopped between its data object and its entry"
