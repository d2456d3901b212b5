"""Mutation check: break the library on purpose, one line at a time, and see whether the
tests notice.

Each mutation below changes one line of a Python module of mshare in a scratch copy of
the installed package (the compiled core is copied as built, never touched), then runs
the test files that should catch it against that copy. A mutation the tests survive is
a gap in the suite. Run as root from a checkout, with mshare and its test extras
installed:

    python tests/mutation.py [--only NAME ...] [--output results.md]

The same tests first run on the unmutated copy and must pass (the control). It prints
one line per mutation and a Markdown table; the exit status is 1 when any mutation was
missed (or could not be applied), 2 when the control fails.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import mshare

TESTS = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Mutation:
    name: str
    module: str          # path inside the package
    original: str        # must occur exactly once in the module
    broken: str
    tests: tuple         # test files (under tests/) expected to catch it
    meaning: str


MUTATIONS = (
    Mutation("permission: writable attach opens the entry read-only", "registry.py",
             "flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW",
             "flags = os.O_RDONLY | os.O_NOFOLLOW",
             ("test_permissions.py",), "write permission is no longer checked on the entry"),
    Mutation("entry: symlinks followed", "registry.py",
             "flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_NONBLOCK",
             "flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NONBLOCK",
             ("test_registry_safety.py",), "a planted symlink is read as an entry"),
    Mutation("entry: CRC not checked", "entry.py",
             "if crc != zlib.crc32(data[:body_length]):",
             "if crc != zlib.crc32(data[:body_length]) and False:",
             ("test_registry_safety.py", "test_fuzz.py"), "a damaged entry is trusted"),
    Mutation("entry: alignment of the address not checked", "entry.py",
             "    if entry.addr % alignment:",
             "    if entry.addr % 4096:",
             ("test_registry_safety.py", "test_fuzz.py"), "an entry may place a region off the grid"),
    Mutation("data object: owner not compared", "binding.py",
             "if data_stat.st_uid != entry_stat.st_uid:",
             "if False:",
             ("test_registry_safety.py", "test_permissions.py"),
             "another user's file is mapped as the region's data"),
    Mutation("data object: short file mapped", "binding.py",
             "if data_stat.st_size < entry.map_length:",
             "if data_stat.st_size < entry.data_length // 2:",
             ("test_registry_safety.py",), "a truncated data object is mapped (SIGBUS later)"),
    Mutation("addresses: overlapping range chosen", "addresses.py",
             "if start >= candidate + length:",
             "if start >= candidate:",
             ("test_addresses.py", "test_registry.py"), "two regions may share addresses"),
    Mutation("addresses: arena end not checked", "addresses.py",
             "if not (start <= addr and addr + length <= end):",
             "if not (start <= addr):",
             ("test_bad_input.py",), "a requested address may run past the arena"),
    Mutation("names: '/' allowed", "names.py",
             'if "/" in name:',
             'if "//" in name:',
             ("test_fuzz.py",), "a name may leave the registry directory"),
    Mutation("modes: setuid bits allowed", "names.py",
             "if not 0 <= mode <= 0o777:",
             "if not 0 <= mode <= 0o7777:",
             ("test_bad_input.py",), "modes beyond rwx are applied"),
    Mutation("gc: a live creator's temporary file removed", "garbage.py",
             "if public and _alive(int(public.group(1))):",
             "if public and False:",
             ("test_gc.py",), "gc deletes work in progress of a live process"),
    Mutation("gc: mapped ranges look unmapped", "garbage.py",
             "        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
             "        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)",
             ("test_gc.py",), "gc frees address ranges processes still map"),
    Mutation("listing: 'no access' entries dropped", "operations.py",
             'found.append(UnreadableRegion.from_stat(name, registry.stat_entry(name), "no access"))',
             'registry.stat_entry(name)',
             ("test_permissions.py",), "list() hides regions the caller may not read"),
)


def scratch_copy(workspace):
    """The installed package (compiled core included) and this test suite, copied."""
    site = os.path.join(workspace, "site")
    shutil.copytree(os.path.dirname(mshare.__file__), os.path.join(site, "mshare"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    tests = os.path.join(workspace, "tests")
    shutil.copytree(TESTS, tests, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
    return site, tests


def apply(mutation, site):
    path = os.path.join(site, "mshare", mutation.module)
    with open(path) as module:
        source = module.read()
    if source.count(mutation.original) != 1:
        raise LookupError(f"{mutation.module}: the line to break occurs "
                          f"{source.count(mutation.original)} times, not once: {mutation.original!r}")
    with open(path, "w") as module:
        module.write(source.replace(mutation.original, mutation.broken))
    return path, source


def judge(mutation, workspace, test_files=None):
    """``caught``, ``missed`` or ``error: ...`` for one mutation (None: the unmutated
    copy, which must pass) in a fresh scratch copy."""
    site, tests = scratch_copy(workspace)
    if mutation is not None:
        try:
            apply(mutation, site)
        except LookupError as error:
            return f"error: {error}"
        test_files = mutation.tests
    environment = dict(os.environ, PYTHONPATH=site, PYTHONDONTWRITEBYTECODE="1")
    environment.pop("MSHARE_CI", None)  # a skip is not a catch, and not a failure here
    environment.pop("MSHARE_TEST_BUSY", None)  # no busy loops per mutation run
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--rootdir", tests,
         *test_files],
        cwd=tests, env=environment, capture_output=True, text=True,
    )
    if result.returncode == 1:
        return "caught"
    if result.returncode == 0:
        return "missed"
    return f"error: pytest exited {result.returncode}: {result.stdout.strip().splitlines()[-1:]}"


def table(outcomes):
    lines = ["| mutation | module | tests run | result |", "|---|---|---|---|"]
    for mutation, outcome in outcomes:
        lines.append(f"| {mutation.name} | `{mutation.module}` | "
                     f"{', '.join(mutation.tests)} | {outcome} |")
    caught = sum(outcome == "caught" for _, outcome in outcomes)
    lines.append(f"\n{caught} of {len(outcomes)} mutations caught.")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only mutations whose name contains this")
    parser.add_argument("--output", help="also write the Markdown table here")
    options = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS
              if options.only is None or any(word in m.name for word in options.only)]
    # A control first: the same tests on the unmutated copy must pass, or a "caught"
    # below would mean nothing.
    test_files = sorted({test for mutation in chosen for test in mutation.tests})
    with tempfile.TemporaryDirectory(prefix="mshare-mutation-") as workspace:
        os.chmod(workspace, 0o755)
        control = judge(None, workspace, test_files)
    label = "passes" if control == "missed" else control
    print(f"{label:>8}  (control: no mutation, {' '.join(test_files)})", flush=True)
    if control != "missed":
        print("the unmutated copy does not pass its tests; no mutation can be judged", file=sys.stderr)
        return 2
    outcomes = []
    for mutation in chosen:
        with tempfile.TemporaryDirectory(prefix="mshare-mutation-") as workspace:
            os.chmod(workspace, 0o755)  # children running as other users import from here
            outcome = judge(mutation, workspace)
        print(f"{outcome:>8}  {mutation.name}", flush=True)
        outcomes.append((mutation, outcome))
    report = table(outcomes)
    print(report)
    if options.output:
        with open(options.output, "w") as output:
            output.write(report + "\n")
    return 0 if all(outcome == "caught" for _, outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
