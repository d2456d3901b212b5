"""Resource exhaustion: /dev/shm full, the registry's file system out of inodes, the
address arena used up, the file-descriptor limit and the address-space limit reached.
Each is a clear error at the call that hit it, leaves nothing behind, and never turns
into a SIGBUS or SIGSEGV later (every page of what did get created is touched).

The real /dev/shm is never filled: those children get a private mount namespace with a
tiny tmpfs mounted over /dev/shm (or over their registry) that nobody else sees.
"""

import fcntl
import json
import os
import textwrap

import pytest

import mshare
from consistency import assert_clean, index_holds_nothing
from figures import record
from helpers import run_python, run_with_private_mounts
from leftovers import state
from mshare import addresses
from mshare.registry import range_file_name

GiB = 1 << 30

# Shared by the children below: what this registry holds, to compare before and after.
SNAPSHOT = """
import errno, json, os, mshare
from leftovers import state

def snapshot():
    return state(os.environ["MSHARE_ROOT"])

def touch_all(region):
    for offset in range(0, region.size, 4096):
        region.buf[offset] = 1
"""


def run_isolated(mounts, code):
    """Run ``code`` (after SNAPSHOT) in a child with a private mount namespace, once the
    shell commands ``mounts`` have run in it; return its JSON output."""
    return json.loads(run_with_private_mounts(mounts, SNAPSHOT + textwrap.dedent(code)).stdout)


@pytest.fixture
def registry(registry_path):
    mshare.list()
    return registry_path


def test_dev_shm_full(registry):
    outcome = run_isolated("mount -t tmpfs -o size=1m tmpfs /dev/shm", """
        before = snapshot()
        made, refused = [], []
        for index in range(8):
            before_this_create = snapshot()
            try:
                region = mshare.create(f"piece-{index}", 256 << 10)
            except OSError as error:
                refused.append([error.errno, error.strerror])
                assert snapshot() == before_this_create  # the refused create left nothing
                continue
            touch_all(region)
            made.append(region)
        try:
            mshare.create("too-big", 2 << 20, hugepages="off")  # /dev/shm is what is full
        except OSError as error:
            refused.append([error.errno, error.strerror])
        after_failures = snapshot()
        for region in made:
            touch_all(region)
            region.close()
            mshare.unlink(region.name)
        print(json.dumps({"made": len(made), "refused": refused,
                          "entries": after_failures[0], "objects": len(after_failures[1]),
                          "left": snapshot() == before}))
    """)
    made = outcome["made"]  # as many as 1 MiB holds, with each region's bookkeeping
    assert 1 <= made < 4 and len(outcome["refused"]) == 8 - made + 1
    assert all(code == 28 and "not enough space in /dev/shm" in message
               for code, message in outcome["refused"])
    assert outcome["objects"] == made
    assert len([entry for entry in outcome["entries"] if entry.startswith("piece")]) == made
    assert outcome["left"]
    assert_clean(registry)
    record("dev/shm full", refused=len(outcome["refused"]))


@pytest.mark.parametrize("spare_inodes", [0, 1, 2, 3, 4, 5])
def test_registry_file_system_out_of_inodes(registry_path, spare_inodes):
    # The registry on a tmpfs with few inodes: fill them, leave ``spare_inodes`` free,
    # and create. Each spare inode lets create get one step further before it fails:
    # the address index's directory and file, the range file, the temporary entry, its
    # link (tmpfs counts links). The lock is the directory itself: no inode.
    mount_point = registry_path + "-fs"
    os.mkdir(mount_point)
    try:
        outcome = run_isolated(f"mount -t tmpfs -o nr_inodes=16,size=1m tmpfs {mount_point}", f"""
            os.environ["MSHARE_ROOT"] = {mount_point!r} + "/registry"
            mshare.list()
            junk = []
            while True:
                try:
                    path = f"{mount_point}/junk-{{len(junk)}}"
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY))
                    junk.append(path)
                except OSError:
                    break
            for path in junk[len(junk) - {spare_inodes}:] if {spare_inodes} else []:
                os.unlink(path)
            before = snapshot()
            try:
                mshare.create("region", 4096).close()
                result = "created"
                mshare.unlink("region")
            except OSError as error:
                result = [error.errno, str(error)]
            print(json.dumps({{"result": result, "unchanged": snapshot() == before}}))
        """)
    finally:
        os.rmdir(mount_point)
    assert outcome["unchanged"], outcome
    if spare_inodes < 5:
        assert outcome["result"][0] == 28, outcome
    else:
        assert outcome["result"] == "created"


def test_address_arena_used_up(registry_path, name, backend):
    # Someone holds every 1 GiB slot of the arena but the last; the first create takes
    # that slot, the next one finds nothing.
    start, end = addresses.arena()
    planted = os.path.join(registry_path, range_file_name(start, end - GiB))
    mshare.list()
    with open(planted, "x") as output:
        output.write("shm /mshare-00000000-0000000000000000\n")
    holder = os.open(planted, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_SH)  # it is mapped, as far as anyone can tell
    try:
        last = mshare.create(name, backend.size(4096), hugepages=backend.hugepages)
        assert last.addr == end - GiB
        before = state(registry_path)
        with pytest.raises(mshare.MshareError, match="no free .* range left in the address arena") as raised:
            mshare.create(name + "-more", backend.size(4096), hugepages=backend.hugepages)
        assert raised.value.errno == 12  # ENOMEM
        with pytest.raises(mshare.AddressConflictError):
            mshare.create(name + "-placed", backend.size(4096), addr=start, hugepages=backend.hugepages)
        assert state(registry_path) == before
        last.close()
        mshare.unlink(name)
    finally:
        os.close(holder)
        os.unlink(planted)
    assert_clean(registry_path)
    # Removed by hand, behind the registry's back: the next change of the registry (here
    # gc) finds the index stale and makes it anew, without the planted range.
    mshare.gc()
    assert index_holds_nothing(registry_path)


def test_file_descriptor_limit(registry_path, backend):
    mshare.create("base", backend.size(1 << 20), hugepages=backend.hugepages).close()
    outcomes = json.loads(run_python(SNAPSHOT + textwrap.dedent(f"""
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        def open_fds():
            return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
        # Fill every hole below the highest descriptor, so that a limit just above it
        # leaves exactly ``spare`` descriptors free.
        # Once read, mshare keeps /proc/self/mountinfo open to learn of mount changes:
        # that descriptor is there before the baseline is taken.
        snapshot()
        highest = max(open_fds())
        while (fd := os.open("/dev/null", os.O_RDONLY)) < highest:
            pass
        os.close(fd)
        baseline = open_fds()
        outcomes = []
        for spare in range(12):
            for what in ("create", "attach"):
                before = snapshot()
                resource.setrlimit(resource.RLIMIT_NOFILE, (max(baseline) + 1 + spare, hard))
                try:
                    region = ({backend.create_code("extra", 4096)} if what == "create"
                              else mshare.attach("base"))
                    outcome = "ok"
                except OSError as error:
                    outcome = [error.errno, str(error)]
                    region = None
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                if region is not None:
                    touch_all(region)
                    region.close()
                    if what == "create":
                        mshare.unlink("extra")
                outcomes.append([what, spare, outcome, snapshot() == before, open_fds() == baseline])
        print(json.dumps(outcomes))
    """)).stdout)
    failures = [case for case in outcomes if case[2] != "ok"]
    assert failures and any(case[2] == "ok" for case in outcomes)
    for what, spare, result, unchanged, no_fd_leak in outcomes:
        assert unchanged and no_fd_leak, (what, spare, result)
        if result != "ok":
            assert result[0] == 24 or "open files" in result[1], (what, spare, result)
    mshare.unlink("base")
    assert_clean(registry_path)
    record("fd limit", backend=backend.name, limits_tried=len(outcomes), refused=len(failures))


def test_address_space_limit(registry_path, backend):
    mshare.create("big", 64 << 20, hugepages=backend.hugepages).close()
    outcome = json.loads(run_python(SNAPSHOT + textwrap.dedent(f"""
        import resource
        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) for line in status if line.startswith("VmSize")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + (32 << 20), resource.RLIM_INFINITY))
        results = []
        for call in (lambda: {backend.create_code("another", 64 << 20)}, lambda: mshare.attach("big")):
            before = snapshot()
            try:
                call().close()
                results.append(["ok"])
            except OSError as error:
                results.append([error.errno, snapshot() == before])
        print(json.dumps(results))
    """)).stdout)
    assert outcome == [[12, True], [12, True]]  # ENOMEM, nothing left behind
    mshare.unlink("big")
    assert_clean(registry_path)
