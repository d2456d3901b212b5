"""A hostile registry: everything another local user can plant in the world-writable
registry and in /dev/shm gives the victim a clear error, never a crash, a hang, or a
mapping over the victim's own memory.

The victim always runs in a child process that is watched: a signal, a hang (timeout)
or a traceback fails the test, and every outcome is compared with what it must be.
"""

import fcntl
import json
import math
import os
import shutil
import struct
import subprocess

import pytest

import mshare
from consistency import read_documented_entry
from figures import record
from forge import ADDR_AT, CREATED_AT, FIXED_SIZE, Forger, patched, recrc
from helpers import run_python, start_python
from mshare import addresses
from mshare.backends.shm import SHM_DIRECTORY
from mshare.registry import Registry, range_file_name
from people import MEMBER, STRANGER, STRANGER_GROUP, as_member

GiB = 1 << 30
ENTRY_OPS = ("attach-ro", "attach-rw", "info")
DATA_OPS = ("attach-ro", "attach-rw")


def slot(index):
    """An address for forged regions, well above where the tests' real regions go."""
    return addresses.arena()[0] + (512 + index) * GiB


def region_id(index):
    return f"{0xbad0000000000000 + index:016x}"


@pytest.fixture
def forger(registry_path):
    mshare.list()  # makes the registry directory
    forger = Forger(registry_path, STRANGER, STRANGER_GROUP)
    yield forger
    forger.remove_all()


@pytest.fixture
def victim(registry_path, name, backend):
    """A region of root's on each backend, mode 0644, holding known bytes, mapped by
    nobody; its entry as the documented format gives it."""
    with mshare.create(name, backend.size(4096), mode=0o644, hugepages=backend.hugepages) as region:
        region.buf[:11] = b"victim data"
        region.buf[-11:] = b"victim tail"
    entry = read_documented_entry(registry_path, name)
    assert entry.backend == backend.name
    yield entry
    try:
        mshare.unlink(name)
    except FileNotFoundError:
        pass


def probe(names, ops, *, check_victim=None, **user):
    """Run ``ops`` on every name in a watched child; return ``{(name, op): (kind, message)}``.

    With ``check_victim`` the child first attaches that region read-only and, after every
    probe, checks that its bytes are still there: no probe may map over it.
    """
    code = f"""
        import json, mshare
        victim = mshare.attach({check_victim!r}, readonly=True) if {check_victim!r} else None
        before = bytes(victim.buf) if victim else b""
        for name in {list(names)!r}:
            for op in {tuple(ops)!r}:
                print(json.dumps({{"trying": [name, op]}}), flush=True)
                try:
                    if op == "info":
                        mshare.info(name)
                    else:
                        mshare.attach(name, readonly=op == "attach-ro").close()
                    outcome = ["ok", ""]
                except Exception as error:
                    outcome = [type(error).__name__, str(error)]
                if victim is not None:
                    assert bytes(victim.buf) == before, "the victim's memory changed"
                print(json.dumps({{"probe": [name, op], "outcome": outcome}}), flush=True)
        if victim is not None:
            victim.close()
    """
    result = run_python(code, check=False, timeout=60, **user)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    last = lines[-1] if lines else None
    assert result.returncode == 0, (
        f"victim exited {result.returncode} at {last}\n{result.stderr}"
    )
    return {tuple(line["probe"]): tuple(line["outcome"]) for line in lines if "probe" in line}


def check_outcomes(outcomes, expected):
    wrong = {
        key: outcome for key, outcome in outcomes.items()
        if outcome[0] != expected[key][0] or expected[key][1] not in outcome[1]
    }
    assert not wrong, "\n".join(f"{key}: got {wrong[key]}, want {expected[key]}" for key in wrong)
    assert set(outcomes) == set(expected)


# -- the entries an attacker can plant ---------------------------------------------------

def plant_entries(forger, victim_name):
    """Plant every malformed entry; return ``{name: (exception, message fragment)}``."""
    path = lambda name: os.path.join(forger.registry_path, name)  # noqa: E731
    good = forger.entry(region_id(0), slot(0)).pack()
    arena_start, arena_end = addresses.arena()
    cases = {}

    def entry(name, content, expected, fragment):
        forger.plant_entry(name, content)
        cases[name] = (expected, fragment)

    def field(name, expected_fragment, **fields):
        fields.setdefault("region_id", region_id(len(cases)))
        fields.setdefault("addr", slot(len(cases)))
        entry(name, forger.entry(**fields),
              "CorruptEntryError", expected_fragment)

    forger.symlink(victim_name, path("link-to-victim"))
    forger.symlink("/etc/passwd", path("link-to-passwd"))
    forger.symlink("nowhere", path("link-dangling"))
    forger.fifo(path("fifo"))
    forger.directory(path("directory"))
    forger.socket(path("socket"))
    for name in ("link-to-victim", "link-to-passwd", "link-dangling", "fifo", "directory", "socket"):
        cases[name] = ("CorruptEntryError", "not a regular file")
    entry("empty", b"", "CorruptEntryError", "truncated")
    entry("truncated", good[:50], "CorruptEntryError", "truncated")
    entry("bad-magic", patched(good, 0, "4s", b"EVIL"), "CorruptEntryError", "not an mshare entry")
    entry("version-2", patched(good, 4, "<H", 2), "CorruptEntryError", "version 2")
    entry("header-length", patched(good, 6, "<H", 100), "CorruptEntryError", "header length")
    entry("bad-crc", good[:-1] + bytes([good[-1] ^ 1]), "CorruptEntryError", "checksum")
    entry("trailing-bytes", good + b"x", "CorruptEntryError", "expected")
    entry("oversized", good + bytes(1 << 16), "CorruptEntryError", "expected")
    undecodable = bytearray(good)
    undecodable[FIXED_SIZE + 1] = 0xFF
    entry("undecodable", recrc(bytes(undecodable)), "CorruptEntryError", "undecodable")
    entry("unaligned", patched(good, ADDR_AT, "<Q", slot(0) + 4096), "CorruptEntryError",
          "not aligned")
    field("below-arena", "outside the arena", addr=arena_start - GiB)
    field("above-arena", "outside the arena", addr=arena_end)
    field("wrapping", "outside the arena", addr=(1 << 64) - GiB)
    field("reserved-short", "reserved length", reserved_length=0)
    field("size-zero", "inconsistent", size=0)
    field("data-short-of-size", "inconsistent", data_length=0)
    field("map-short", "map length", map_length=2048)
    field("page-size", "page size", page_size=3000)
    field("backend-unknown", "unknown backend", backend="evil")
    field("region-id", "region id", region_id="ZZZZZZZZZZZZZZZZ")
    field("other-registry", "not a data object of this registry",
          location=f"/mshare-00000000-{region_id(1)}")
    field("arbitrary-file", "not a data object of this registry", location="/../../etc/shadow")
    field("nul-location", "location", location=forger.location(region_id(2)) + "\0")
    entry("created-infinite", patched(good, CREATED_AT, "<d", math.inf), "CorruptEntryError",
          "creation time")
    entry("created-huge", patched(good, CREATED_AT, "<d", 1e300), "CorruptEntryError",
          "creation time")
    return cases


def test_malformed_entries_give_clear_errors(forger, victim, name):
    cases = plant_entries(forger, name)
    outcomes = probe(cases, ENTRY_OPS, check_victim=name)
    check_outcomes(outcomes, {(case, op): cases[case] for case in cases for op in ENTRY_OPS})
    record("malformed entries", backend=victim.backend, entries=len(cases), probes=len(outcomes))


def test_malformed_entries_seen_by_another_user(forger, victim, name, user_site):
    cases = plant_entries(forger, name)
    outcomes = probe(cases, ("attach-ro", "info"), check_victim=name, **as_member())
    check_outcomes(outcomes, {(name, op): cases[name] for name in cases for op in ("attach-ro", "info")})


# -- entries that parse, but whose data object or range is wrong -------------------------

def plant_bad_data(forger, victim):
    """Well-formed entries of the attacker's whose data or range is hostile."""
    cases = {}

    def region(name, index, fragment, expected="CorruptEntryError", **kwargs):
        entry = forger.entry(region_id(100 + index), slot(100 + index), **kwargs)
        forger.plant_entry(name, entry)
        cases[name] = (expected, fragment)
        return entry

    entry = region("victim-data", 0, "but its data by uid 0", location=victim.location,
                   backend=victim.backend, page_size=victim.page_size, size=victim.size,
                   data_length=victim.data_length, map_length=victim.map_length,
                   reserved_length=victim.reserved_length)
    forger.plant_range(entry.addr, entry.end, entry.location)
    entry = region("stale", 1, "is gone", expected="FileNotFoundError")
    forger.plant_range(entry.addr, entry.end, entry.location)
    for index, (name, make) in enumerate(
        (("data-fifo", forger.fifo), ("data-directory", forger.directory),
         ("data-symlink", lambda path: forger.symlink("/etc/passwd", path))), start=2,
    ):
        entry = region(name, index, "not a regular file")
        make(SHM_DIRECTORY + entry.location)
        forger.plant_range(entry.addr, entry.end, entry.location)
    entry = region("data-short", 5, "holds 4096 bytes", size=8192, data_length=8192, map_length=8192)
    forger.plant_data(entry.region_id, 4096)
    forger.plant_range(entry.addr, entry.end, entry.location)
    entry = region("mode-mismatch", 6, "mode")
    forger.plant_data(entry.region_id, 4096, mode=0o600)
    forger.plant_range(entry.addr, entry.end, entry.location)
    entry = region("range-missing", 7, "not recorded")
    forger.plant_data(entry.region_id, 4096)
    for index, name in ((8, "range-fifo"), (9, "range-symlink")):
        entry = region(name, index, "range file")
        forger.plant_data(entry.region_id, 4096)
        range_path = os.path.join(forger.registry_path, range_file_name(entry.addr, entry.end))
        if name == "range-fifo":
            forger.fifo(range_path, 0o444)
        else:
            forger.symlink("/etc/passwd", range_path)
    return cases


def test_entries_with_hostile_data_or_ranges(forger, victim, name):
    cases = plant_bad_data(forger, victim)
    outcomes = probe(cases, DATA_OPS, check_victim=name)
    check_outcomes(outcomes, {(case, op): cases[case] for case in cases for op in DATA_OPS})
    record("hostile data objects and ranges", backend=victim.backend, entries=len(cases),
           probes=len(outcomes))


def test_range_held_exclusively_by_an_attacker_fails_instead_of_hanging(forger):
    entry = forger.region("blocked", region_id(200), slot(200))
    range_path = os.path.join(forger.registry_path, range_file_name(entry.addr, entry.end))
    holder = os.open(range_path, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        outcomes = probe(["blocked"], DATA_OPS)
    finally:
        os.close(holder)
    for op in DATA_OPS:
        kind, message = outcomes[("blocked", op)]
        assert kind == "MshareError" and "locked" in message, outcomes
    assert probe(["blocked"], DATA_OPS) == {("blocked", op): ("ok", "") for op in DATA_OPS}


def test_entry_over_the_victims_own_mapping_is_refused(forger, victim, name):
    # The attacker's region claims the victim's address (and reuses its range file).
    forger.plant_data(region_id(300), 4096)
    forger.plant_entry("squatter", forger.entry(region_id(300), victim.addr))
    outcomes = probe(["squatter"], DATA_OPS, check_victim=name)
    for op in DATA_OPS:
        kind, message = outcomes[("squatter", op)]
        assert kind == "AddressConflictError" and f"{victim.addr:#x}" in message, outcomes


# -- root cleaning up must not hurt the victim -------------------------------------------

def test_root_unlinking_a_planted_entry_spares_the_victim(forger, victim, name, registry_path):
    # One entry names the victim's data object, another only its address range.
    forger.plant_entry("takes-data", forger.entry(
        region_id(400), victim.addr, location=victim.location, backend=victim.backend,
        page_size=victim.page_size, size=victim.size, data_length=victim.data_length,
        map_length=victim.map_length, reserved_length=victim.reserved_length))
    forger.plant_entry("takes-range", forger.entry(region_id(401), victim.addr))
    mshare.unlink("takes-data")
    mshare.unlink("takes-range")
    assert os.path.exists(victim.data_path)
    assert os.path.exists(os.path.join(registry_path, range_file_name(victim.addr, victim.range_file_end)))
    with mshare.attach(name, readonly=True) as region:
        assert (bytes(region.buf[:11]), bytes(region.buf[-11:])) == (b"victim data", b"victim tail")
    assert [info.name for info in mshare.list()] == [name]


# -- the registry directory itself -------------------------------------------------------

@pytest.mark.parametrize("problem, fragment", [
    ("symlink", "symbolic link"),
    ("no-sticky", "chmod +t"),
    ("group-writable", "chmod +t"),
    ("foreign-owner", f"owned by uid {STRANGER}"),
    ("regular-file", "not a directory"),
])
def test_unsafe_registry_directories_are_refused(tmp_path, monkeypatch, problem, fragment):
    root = tmp_path / "registry"
    if problem == "symlink":
        (tmp_path / "real").mkdir(mode=0o1777)
        root.symlink_to(tmp_path / "real")
    elif problem == "regular-file":
        root.write_bytes(b"")
    else:
        root.mkdir()
        os.chmod(root, {"no-sticky": 0o777, "group-writable": 0o770, "foreign-owner": 0o1777}[problem])
        if problem == "foreign-owner":
            os.chown(root, STRANGER, STRANGER_GROUP)
    monkeypatch.setenv("MSHARE_ROOT", str(root))
    with pytest.raises(mshare.UnsafeRegistryError) as raised:
        mshare.list()
    assert fragment in str(raised.value)
    assert str(root) in str(raised.value)
    if problem in ("no-sticky", "foreign-owner"):
        assert os.listdir(root) == []


@pytest.mark.parametrize("file_name", [".lock", "mshare_info"])
@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "unreadable"])
def test_files_planted_under_the_registrys_own_names_block_nothing(forger, registry_path,
                                                                  user_site, file_name, kind):
    """Another user's file where ``mshare_info`` (made for people, read by nothing) or an
    old ``.lock`` (the lock is the registry directory itself) would be: a member's calls
    all work, and the planted file is left alone."""
    path = os.path.join(registry_path, file_name)
    if os.path.lexists(path):
        os.unlink(path)
    {"symlink": lambda: forger.symlink("/etc/passwd", path), "fifo": lambda: forger.fifo(path),
     "directory": lambda: forger.directory(path),
     "unreadable": lambda: forger.file(path, b"", mode=0o000)}[kind]()
    outcome = run_python("""
        import mshare
        with mshare.create("x", 4096, mode=0o644) as region:
            region.buf[0] = 7
        with mshare.attach("x") as region:
            print(region.buf[0], [listed.name for listed in mshare.list()])
        mshare.unlink("x")
    """, timeout=30, **as_member())
    assert outcome.stdout.split() == ["7", "['x']"]
    assert os.lstat(path).st_uid == STRANGER


def test_no_file_another_user_owns_or_swaps_can_take_the_registry_lock(forger, registry_path):
    """The registry's lock is its directory. Another user who made a ``.lock`` there first
    and keeps putting fresh files in its place (which broke mutual exclusion while the lock
    was that file) makes no second holder of the exclusive lock."""
    path = os.path.join(registry_path, ".lock")
    forger.file(path, b"", mode=0o444)
    holder = start_python(f"""
        import sys
        from mshare.registry import Registry
        with Registry({registry_path!r}) as registry, registry.locked():
            print("held", flush=True)
            sys.stdin.readline()
    """, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        forger.file(path + ".new", b"", mode=0o444)
        os.rename(path + ".new", path)  # as the owner of .lock may, in the sticky directory
        with Registry(registry_path) as registry, registry.try_locked() as taken:
            assert taken is False
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    with Registry(registry_path) as registry, registry.try_locked() as taken:
        assert taken is True


def test_an_entry_its_owner_holds_under_a_lease_fails_only_itself(forger, registry_path,
                                                                 user_site, name):
    """A write lease (``F_SETLEASE``) on an entry, which only its owner can take, makes
    every other open of it fail at once (mshare opens with ``O_NONBLOCK``): list and gc
    still work for everyone, listing it as unreadable, and attach says what is wrong."""
    with mshare.create(name, 4096, mode=0o644) as other:
        other.buf[0] = 5
    holder = start_python(f"""
        import fcntl, os, signal, sys, mshare
        mshare.create("leased", 4096, mode=0o644).close()
        fd = os.open(os.path.join({registry_path!r}, "leased"), os.O_RDONLY)
        signal.signal(signal.SIGIO, lambda *_: None)  # keeps the lease past a break notice
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        print("leased", flush=True)
        sys.stdin.readline()
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        os.close(fd)
        mshare.unlink("leased")
    """, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **as_member())
    try:
        assert holder.stdout.readline().strip() == "leased"
        listed = {region.name: getattr(region, "status", "ok") for region in mshare.list()}
        assert listed[name] == "ok"
        assert listed["leased"].startswith("corrupt") and "lease" in listed["leased"]
        report = mshare.gc(dry_run=True)
        assert not any(name in str(removal) for removal in report.removed)
        with pytest.raises(mshare.CorruptEntryError, match="lease"):
            mshare.attach("leased")
        with mshare.attach(name) as other:
            assert other.buf[0] == 5
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    mshare.unlink(name)


def test_registry_owned_by_the_caller_or_root_is_accepted(request, registry_path, user_site, name):
    mshare.list()  # root makes the shared registry, as an administrator would
    private = registry_path + "-private"
    os.mkdir(private, 0o700)
    os.chown(private, MEMBER, MEMBER)
    request.addfinalizer(lambda: shutil.rmtree(private))
    for root in (private, registry_path):
        run_python(f"""
            import os, mshare
            os.environ["MSHARE_ROOT"] = {root!r}
            with mshare.create({name!r}, 4096) as region:
                region.buf[0] = 7
            mshare.unlink({name!r})
        """, **as_member())


# -- names --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["..", ".", "../escape", "a/b", "/etc/passwd", ".lock",
                                 ".range-0-1", "mshare_info", "", "x" * 256, "nul\0"])
def test_names_cannot_leave_the_registry_or_touch_its_files(registry_path, bad):
    for call in (lambda: mshare.create(bad, 4096), lambda: mshare.attach(bad),
                 lambda: mshare.unlink(bad), lambda: mshare.info(bad)):
        with pytest.raises(ValueError):
            call()
    assert not os.path.exists(os.path.join(os.path.dirname(registry_path), "escape"))


def test_ls_shows_hostile_names_without_crashing_or_escaping(forger, registry_path):
    entry = forger.region("plain", region_id(500), slot(500))
    os.unlink(os.path.join(registry_path, "plain"))
    forger.made.remove(os.path.join(registry_path, "plain"))
    forger.plant_entry("title\x1b]0;owned\x07\nforged line", entry)
    bytes_name = os.path.join(os.fsencode(registry_path), b"\xff\xfe")
    with open(bytes_name, "xb") as output:
        output.write(b"junk")
    try:
        listing = run_python("import sys; from mshare.cli import main; sys.exit(main(['ls']))")
    finally:
        os.unlink(bytes_name)
    assert "\x1b" not in listing.stdout and "\x07" not in listing.stdout
    lines = listing.stdout.splitlines()
    assert len(lines) == 3, listing.stdout
    assert any("\\x1b]0;owned\\x07\\nforged line" in line for line in lines)
    assert any("\\udcff\\udcfe" in line and "corrupt" in line for line in lines)


def test_created_field_cannot_crash_mshare_info(forger):
    good = forger.entry(region_id(600), slot(600)).pack()
    forger.plant_entry("far-future", patched(good, CREATED_AT, "<d", 1e300))
    result = run_python("import sys; from mshare.cli import main; sys.exit(main(['info', 'far-future']))",
                        check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "creation time" in result.stderr


def test_forged_offsets_match_the_entry_format(forger):
    entry = forger.entry(region_id(700), slot(700))
    packed = entry.pack()
    assert len(packed) == FIXED_SIZE + len(entry.location) + 4
    assert struct.unpack_from("<Q", packed, ADDR_AT)[0] == entry.addr
    assert struct.unpack_from("<d", packed, CREATED_AT)[0] == entry.created
