"""The permission matrix: owner / group / other x read / write bits x readonly, with a
non-root creator. Attach succeeds exactly when open(2) on the data object does, the
mapping's protection follows, the data object carries the entry's owner, group and
mode (so bypassing mshare gains nothing), and only the owner or root may unlink.
"""

import itertools
import json
import os
import stat
import subprocess

import pytest

import mshare
from consistency import assert_clean, read_documented_entry
from figures import record
from helpers import run_python, start_python
from mshare.backends.shm import SHM_DIRECTORY
from mshare.registry import Registry
from people import OWNER, OWNER_GROUP, as_member, as_owner, as_stranger

# Every combination of the read and write bits for owner, group and other (execute
# bits mean nothing for a region): 4 x 4 x 4 = 64 modes.
MODES = [owner << 6 | group << 3 | other
         for owner, group, other in itertools.product((0, 2, 4, 6), repeat=3)]
ACTORS = {"owner": (as_owner(), 6), "group": (as_member(), 3), "other": (as_stranger(), 0)}


def region_name(mode):
    return f"perm-{mode:03o}"


def marker(mode):
    return f"mode {mode:03o}".encode()


def allowed(mode, shift, write):
    """What open(2) allows a process of the class at ``shift`` (6 owner, 3 group, 0 other)."""
    bits = mode >> shift & 0o7
    return bool(bits & 0o4) and (not write or bool(bits & 0o2))


# Runs as each actor: attaches every region both ways, opens its data object directly
# both ways, reads the mapping's protection from /proc/self/maps, and reports.
PROBE = """
import json, os, mshare

def protection(addr):
    with open("/proc/self/maps") as maps:
        for line in maps:
            if int(line.split("-")[0], 16) == addr:
                return line.split()[1]

results = []
for name, text, data_path in {regions!r}:
    for readonly in (True, False):
        case = {{"name": name, "readonly": readonly}}
        try:
            with mshare.attach(name, readonly=readonly) as region:
                case["attach"] = "ok"
                case["protection"] = protection(region.addr)
                case["buf_readonly"] = region.buf.readonly
                case["marker"] = bytes(region.buf[:len(text)]).decode()
                if not readonly:
                    region.buf[16] = (region.buf[16] + 1) % 256
        except PermissionError:
            case["attach"] = "PermissionError"
        except Exception as error:
            case["attach"] = repr(error)
        try:
            os.close(os.open(data_path, os.O_RDONLY if readonly else os.O_RDWR))
            case["direct"] = "ok"
        except PermissionError:
            case["direct"] = "PermissionError"
        try:
            mshare.info(name)
            case["info"] = "ok"
        except PermissionError:
            case["info"] = "PermissionError"
        results.append(case)
print(json.dumps(results))
"""


@pytest.fixture
def regions(registry_path, user_site):
    """The 64 regions, created by a non-root user; ``(name, marker, data path)`` each."""
    mshare.list()  # root makes the shared registry
    names = {mode: region_name(mode) for mode in MODES}
    run_python(f"""
        import mshare
        for mode, name in {names!r}.items():
            text = f"mode {{mode:03o}}".encode()
            with mshare.create(name, 4096, mode=mode) as region:
                region.buf[:len(text)] = text
    """, **as_owner())
    with Registry(registry_path) as registry:
        paths = {mode: SHM_DIRECTORY + registry.read_entry(names[mode])[0].location for mode in MODES}
    yield [(names[mode], marker(mode).decode(), paths[mode]) for mode in MODES]
    for name in names.values():
        try:
            mshare.unlink(name)
        except FileNotFoundError:
            pass


def test_data_objects_carry_the_entrys_owner_group_and_mode(registry_path, regions):
    for (name, _, data_path), mode in zip(regions, MODES):
        entry = os.stat(os.path.join(registry_path, name))
        data = os.stat(data_path)
        assert (data.st_uid, data.st_gid, stat.S_IMODE(data.st_mode)) == (OWNER, OWNER_GROUP, mode)
        assert (entry.st_uid, entry.st_gid, stat.S_IMODE(entry.st_mode)) == (OWNER, OWNER_GROUP, mode)


def test_attach_follows_open_for_every_class_mode_and_flag(registry_path, regions):
    checked = 0
    for actor, (user, shift) in ACTORS.items():
        results = json.loads(run_python(PROBE.format(regions=regions), **user).stdout)
        for case, (mode, readonly) in zip(results, itertools.product(MODES, (True, False))):
            assert case["name"] == region_name(mode)
            expected = "ok" if allowed(mode, shift, not readonly) else "PermissionError"
            label = f"{actor} mode {mode:03o} readonly={readonly}"
            assert case["attach"] == expected, (label, case)
            assert case["direct"] == expected, (label, case)
            assert case["info"] == ("ok" if allowed(mode, shift, False) else "PermissionError"), label
            if expected == "ok":
                assert case["protection"] == ("r--s" if readonly else "rw-s"), (label, case)
                assert case["buf_readonly"] is readonly, label
                assert case["marker"] == marker(mode).decode(), label
            checked += 1
    root = json.loads(run_python(PROBE.format(regions=regions)).stdout)
    assert all(case["attach"] == case["direct"] == "ok" for case in root)
    checked += len(root)
    record("permission matrix", modes=len(MODES), classes=len(ACTORS) + 1, attach_cases=checked,
           direct_opens=checked)


def test_only_owner_or_root_may_unlink(registry_path, regions):
    targets = [region for region, mode in zip(regions, MODES) if mode in (0o666, 0o664, 0o600, 0o000)]
    for user in (as_member(), as_stranger()):
        outcome = run_python(f"""
            import errno, json, os, mshare
            out = []
            for name, _, data_path in {targets!r}:
                try:
                    mshare.unlink(name)
                    out.append("unlinked")
                except PermissionError as error:
                    out.append("owner" in str(error))
                for path in (os.path.join(os.environ["MSHARE_ROOT"], name), data_path):
                    try:
                        os.unlink(path)
                        out.append("removed " + path)
                    except PermissionError:
                        pass
            print(json.dumps(out))
        """, **user)
        assert json.loads(outcome.stdout) == [True] * len(targets)
    assert_clean(registry_path)
    for name, text, _ in targets:
        with mshare.attach(name, readonly=True) as region:
            assert bytes(region.buf[:len(text)]).decode() == text
    owner_half, root_half = regions[::2], regions[1::2]
    run_python(f"import mshare\nfor name, _, _ in {owner_half!r}: mshare.unlink(name)", **as_owner())
    for name, _, _ in root_half:
        mshare.unlink(name)
    assert assert_clean(registry_path) == {}
    record("unlink permission", refused=2 * len(targets), by_owner=len(owner_half),
           by_root=len(root_half))


def test_group_member_who_rewrites_an_entry_cannot_redirect_it(registry_path, regions):
    # Whoever may write a region may write its entry (its mode is the region's). A group
    # member points a group-writable region's entry at the data of a region the group
    # may not write, using only what anyone can see (range files, /dev/shm): attach
    # refuses (the modes differ), and the owner's unlink spares the other region's data.
    writable, private = region_name(0o660), region_name(0o600)
    with Registry(registry_path) as registry:
        target = registry.read_entry(private)[0]
    run_python(f"""
        import dataclasses, os
        from mshare.entry import Entry
        forged = Entry(addr={target.addr}, size=4096, data_length=4096, map_length=4096,
                       reserved_length={target.reserved_length}, page_size=4096, backend="shm",
                       region_id={target.region_id!r}, location={target.location!r},
                       creator_pid=1, created=1.7e9)
        with open(os.path.join(os.environ["MSHARE_ROOT"], {writable!r}), "r+b") as entry:
            entry.write(forged.pack())
            entry.truncate()
    """, **as_member())
    result = run_python(f"""
        import mshare
        try:
            mshare.attach({writable!r})
        except mshare.CorruptEntryError as error:
            print(error)
    """, **as_member())
    assert "mode 0660 differs from its data's 0600" in result.stdout
    run_python(f"import mshare; mshare.unlink({writable!r})", **as_owner())
    assert os.path.exists(SHM_DIRECTORY + target.location)
    with mshare.attach(private, readonly=True) as region:
        assert bytes(region.buf[:8]) == marker(0o600)
    # The rewritten region's own data object is now an orphan, which gc sweeps.
    assert [finding.kind for finding in mshare.gc().removed] == ["data object", "range"]


def test_a_region_the_caller_may_not_read_is_listed_as_no_access(registry_path, regions):
    # Run as users who really lack the read bit: root reads every entry, so only a
    # non-root caller can meet this state. Owner-only (0o600) and group-only (0o060).
    result = run_python("""
        import json, subprocess, sys, mshare
        # An UnreadableRegion has no fields from the entry: None stands for them here.
        listed = {info.name: [info.status, info.mode, info.uid]
                             + [getattr(info, field, None) for field in ("size", "addr", "backend")]
                  for info in mshare.list()}
        command = subprocess.run([sys.executable, "-m", "mshare", "ls"], capture_output=True, text=True)
        print(json.dumps({"listed": listed, "ls": command.stdout, "ls_exit": command.returncode}))
    """, **as_stranger())
    seen = json.loads(result.stdout)
    assert seen["ls_exit"] == 0
    # `mshare ls` puts the name after three columns, then "(no access)" when it applies.
    ls_lines = {line.split()[3]: line for line in seen["ls"].splitlines()
                if len(line.split()) > 3 and line.split()[3].startswith("perm-")}
    assert set(seen["listed"]) == {region_name(mode) for mode in MODES}
    for mode in MODES:
        status, listed_mode, uid, *from_entry = seen["listed"][region_name(mode)]
        assert (listed_mode, uid) == (mode, OWNER)  # from stat, readable by anyone
        if allowed(mode, 0, write=False):
            assert status == "ok" and None not in from_entry, (mode, from_entry)
            assert "no access" not in ls_lines[region_name(mode)]
        else:
            assert status == "no access" and from_entry == [None, None, None], (mode, from_entry)
            assert "no access" in ls_lines[region_name(mode)], ls_lines[region_name(mode)]


def test_write_taken_away_is_refused_to_a_process_that_already_maps_the_region(registry_path, user_site):
    # The second attach finds the region mapped writable in its own process already:
    # only the kernel's check on the entry itself can refuse it.
    mshare.list()
    run_python("import mshare; mshare.create('shared', 4096, mode=0o666).close()", **as_owner())
    child = start_python("""
        import sys, mshare
        first = mshare.attach("shared")
        print("attached", flush=True)
        sys.stdin.readline()
        try:
            mshare.attach("shared").close()
            print("attached again")
        except PermissionError as error:
            print("refused", error)
        with mshare.attach("shared", readonly=True) as reader:
            print("readonly", reader.readonly)
        first.close()
    """, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **as_stranger())
    try:
        assert child.stdout.readline() == "attached\n", child.stderr.read()
        entry = read_documented_entry(registry_path, "shared")
        for path in (os.path.join(registry_path, "shared"), entry.data_path):
            os.chmod(path, 0o644)  # the owner takes write away from everyone else
        output, errors = child.communicate("go\n", timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, errors
    refused, readonly = output.splitlines()
    assert refused.startswith("refused") and "does not let you read and write" in refused, output
    assert readonly == "readonly True"
    mshare.unlink("shared")
