"""Property-based tests: any name is either a valid region name (and then stays inside
the registry) or a clean ValueError/TypeError; any entry bytes, random or a mutated
real entry, give a valid region or a clean exception and never a crash. Entries are
parsed, listed and attached in a separate process, so that a crash would be seen."""

import collections
import os
import struct
import subprocess
import zlib

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import mshare
from consistency import INDEX_DIRECTORY, assert_clean
from figures import record, scaled
from helpers import start_python
from mshare.names import validate_name

FUZZ_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# What mshare may raise about a hostile entry; anything else is a bug.
CLEAN = {"ok", "CorruptEntryError", "FileNotFoundError", "AddressConflictError", "MshareError"}

# The README's rule, "names are str of 1-255 UTF-8 bytes, without / or NUL, not starting
# with . and not mshare_info", written out as examples on both sides of every edge.
ACCEPTED_NAMES = [
    "a", "region-1", "x" * 255, "é" * 127 + "e", "😀" * 63 + "abc", "名前", "a.b", "a..",
    "a.", "-", " ", "\n", "a\\b", "mshare_info2", "Mshare_info", "mshare_inf", "_mshare_info",
    "mshare_info ", "lock", "range-", "tmp-1",
]
# (name, what the error must mention)
REFUSED_NAMES = [
    ("", "bytes"), ("x" * 256, "bytes"), ("é" * 128, "bytes"), ("😀" * 64, "bytes"),
    ("a/b", "/"), ("/", "/"), ("b/", "/"), ("../x", "/"), ("x\0y", "NUL"), ("\0", "NUL"),
    (".", "'.'"), ("..", "'.'"), (".lock", "'.'"), (".range-0-1", "'.'"), (".tmp-x", "'.'"),
    (".hidden", "'.'"), ("mshare_info", "reserved"), ("\udcff", "UTF-8"), ("a\ud800b", "UTF-8"),
]

names = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
    st.sampled_from(ACCEPTED_NAMES + [name for name, _ in REFUSED_NAMES]),
)


@pytest.mark.parametrize("name", ACCEPTED_NAMES)
def test_names_the_rules_accept(registry_path, name):
    with mshare.create(name, 4096) as region:
        region.buf[:4] = b"name"
    assert [info.name for info in mshare.list()] == [name]
    assert name in os.listdir(registry_path)  # the entry's file is named exactly so
    mshare.unlink(name)


@pytest.mark.parametrize("name, problem", REFUSED_NAMES)
def test_names_the_rules_refuse(registry_path, name, problem):
    mshare.list()
    before = sorted(os.listdir(registry_path))
    for call in (validate_name, lambda refused: mshare.create(refused, 4096), mshare.attach,
                 mshare.unlink, mshare.info):
        with pytest.raises(ValueError) as raised:
            call(name)
        assert problem in str(raised.value), (call, str(raised.value))
    assert sorted(os.listdir(registry_path)) == before


@settings(max_examples=scaled(50), deadline=None)
@given(st.one_of(st.integers(), st.binary(), st.none(), st.lists(st.text()), st.floats()))
def test_names_that_are_not_str_are_type_errors(name):
    with pytest.raises(TypeError):
        validate_name(name)


@settings(max_examples=scaled(100), **FUZZ_SETTINGS)
@given(names)
def test_any_name_is_a_region_of_that_name_or_a_clean_refusal(registry_path, name):
    # No oracle here (the tables above are the oracle): whatever the name, either it
    # names exactly one new file in the registry, or ValueError leaves nothing behind.
    mshare.list()
    before = sorted(os.listdir(registry_path))
    try:
        region = mshare.create(name, 4096)
    except ValueError:
        assert sorted(os.listdir(registry_path)) == before
        return
    with region:
        region.buf[:4] = b"fuzz"
    try:
        added = set(os.listdir(registry_path)) - set(before) - {".lock", INDEX_DIRECTORY}
        assert name in added and all(other.startswith(".range-") for other in added - {name})
        assert [info.name for info in mshare.list()] == [name]
        with mshare.attach(name, readonly=True) as region:
            assert bytes(region.buf[:4]) == b"fuzz"
    finally:
        mshare.unlink(name)
    assert_clean(registry_path)


# -- entry bytes ---------------------------------------------------------------------

SERVER = """
    import os, struct, sys, mshare
    path = os.path.join(os.environ["MSHARE_ROOT"], "fuzz")
    staging = os.path.join(os.environ["MSHARE_ROOT"], ".fuzz-staging")
    while header := sys.stdin.buffer.read(4):
        data = sys.stdin.buffer.read(struct.unpack("<I", header)[0])
        with open(staging, "wb") as staged:
            staged.write(data)
        os.chmod(staging, 0o644)
        os.replace(staging, path)
        outcomes = []
        for call in (lambda: mshare.info("fuzz"),
                     lambda: mshare.attach("fuzz", readonly=True).close(),
                     lambda: mshare.attach("fuzz").close(),
                     lambda: mshare.list()):
            try:
                call()
                outcomes.append("ok")
            except Exception as error:
                outcomes.append(type(error).__name__)
        print(" ".join(outcomes), flush=True)
"""


class EntryServer:
    """A child that installs each entry it is sent as region ``fuzz`` and reports what
    info, attach (both ways) and list make of it."""

    def __init__(self):
        self.process = None
        self.outcomes = collections.Counter()

    def judge(self, data):
        if self.process is None:
            self.process = start_python(SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.process.stdin.write(struct.pack("<I", len(data)) + data)
        self.process.stdin.flush()
        line = self.process.stdout.readline().decode()
        if not line:
            code = self.process.wait(timeout=30)
            self.process = None
            raise AssertionError(f"the entry killed the process that read it ({code}): {data!r}")
        self.outcomes[line.split()[1]] += 1
        return line.split()

    def close(self):
        if self.process is not None:
            self.process.stdin.close()
            assert self.process.wait(timeout=30) == 0
            self.process.stdout.close()


@pytest.fixture(scope="module")
def server_and_target(tmp_path_factory):
    """A private registry with one real region (``target``) and an entry server on it."""
    root = str(tmp_path_factory.mktemp("fuzz-registry") / "registry")
    previous = os.environ.get("MSHARE_ROOT")
    os.environ["MSHARE_ROOT"] = root
    region = mshare.create("target", 3 * 4096 + 5, mode=0o644)
    with open(os.path.join(root, "target"), "rb") as entry:
        genuine = entry.read()
    server = EntryServer()
    yield server, genuine
    server.close()
    region.close()
    os.unlink(os.path.join(root, "fuzz"))
    mshare.unlink("target")
    assert_clean(root)
    record("entry fuzzing", entries_tried=sum(server.outcomes.values()), **server.outcomes)
    if previous is None:
        del os.environ["MSHARE_ROOT"]
    else:
        os.environ["MSHARE_ROOT"] = previous


def check(server, data):
    info, attach_readonly, attach_writable, listing = server.judge(data)
    assert {info, attach_readonly, attach_writable} <= CLEAN, (info, attach_readonly, attach_writable, data)
    assert listing == "ok", data


def with_crc(body):
    return body + struct.pack("<I", zlib.crc32(body))


@settings(max_examples=scaled(1000), **FUZZ_SETTINGS)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(server_and_target, data):
    server, _ = server_and_target
    check(server, data)


@settings(max_examples=scaled(2000), **FUZZ_SETTINGS)
@given(st.data())
def test_mutated_entries_never_crash(server_and_target, data):
    server, genuine = server_and_target
    body = bytearray(genuine[:-4])
    mutation = data.draw(st.sampled_from(["field", "bits", "cut", "grow"]))
    if mutation == "field":
        # Overwrite one 1/2/4/8-byte field with any value: the checksum is recomputed,
        # so the field checks themselves are what is exercised.
        width = data.draw(st.sampled_from([1, 2, 4, 8]))
        offset = data.draw(st.integers(0, len(body) - width))
        body[offset:offset + width] = data.draw(st.binary(min_size=width, max_size=width))
    elif mutation == "bits":
        for position in data.draw(st.lists(st.integers(0, len(body) * 8 - 1), min_size=1, max_size=8)):
            body[position // 8] ^= 1 << position % 8
    elif mutation == "cut":
        del body[data.draw(st.integers(0, len(body) - 1)):]
    else:
        body += data.draw(st.binary(min_size=1, max_size=64))
    entry = with_crc(bytes(body)) if data.draw(st.booleans()) else bytes(body) + genuine[-4:]
    assume(entry != genuine)
    check(server, entry)
