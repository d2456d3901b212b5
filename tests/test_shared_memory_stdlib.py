"""CPython's own tests of multiprocessing.shared_memory, run against mshare's drop-in under
every interpreter that can run them (tests/stdlib_shared_memory.py is the adapter).

An interpreter qualifies when it can import this very drop-in (the same source) and its
own ``test._test_multiprocessing``: the running one, those in ``MSHARE_STDLIB_PYTHONS``
(paths separated by ``os.pathsep``), and the interpreters of virtual environments next to
the running one (``python3.12 -m venv ../dropin-312 && ../dropin-312/bin/pip install .``).
"""

import glob
import hashlib
import os
import re
import subprocess
import sys

import pytest

import mshare

ADAPTER = os.path.join(os.path.dirname(__file__), "stdlib_shared_memory.py")
VERSIONS = sorted({"3.12", "3.13", f"{sys.version_info.major}.{sys.version_info.minor}"})
DROP_IN_FILES = ("shared_memory.py", "_shareable_list.py", "_shared_memory_tracker.py")
PROBE = f"""
import hashlib, os, sys
import test._test_multiprocessing
import mshare.shared_memory
package = os.path.dirname(mshare.__file__)
digest = hashlib.sha256()
for file in {DROP_IN_FILES!r}:
    with open(os.path.join(package, file), "rb") as source:
        digest.update(source.read())
print(f"{{sys.version_info.major}}.{{sys.version_info.minor}}", digest.hexdigest())
"""


def _environment():
    """This environment without the suite's PYTHONPATH, which points at the running
    interpreter's build of mshare: another interpreter must import its own."""
    environment = dict(os.environ)
    environment.pop("PYTHONPATH", None)
    return environment


def _drop_in_digest():
    digest = hashlib.sha256()
    package = os.path.dirname(mshare.__file__)
    for file in DROP_IN_FILES:
        with open(os.path.join(package, file), "rb") as source:
            digest.update(source.read())
    return digest.hexdigest()


def _candidates():
    yield sys.executable
    yield from filter(None, os.environ.get("MSHARE_STDLIB_PYTHONS", "").split(os.pathsep))
    yield from sorted(glob.glob(os.path.join(os.path.dirname(sys.prefix), "*", "bin", "python")))


def _interpreters():
    """``{version: interpreter}`` for the first qualifying interpreter of each version,
    and ``{version: why a candidate did not qualify}``."""
    found, stale = {}, {}
    expected_digest = _drop_in_digest()
    for interpreter in _candidates():
        probe = subprocess.run([interpreter, "-c", PROBE], capture_output=True, text=True,
                               cwd="/", timeout=60, env=_environment())
        if probe.returncode != 0:
            continue
        version, digest = probe.stdout.split()
        if digest != expected_digest:
            stale.setdefault(version, f"{interpreter} has another version of the drop-in "
                                      "installed; run pip install . with it")
            continue
        found.setdefault(version, interpreter)
    return found, stale


@pytest.fixture(scope="module")
def interpreters():
    return _interpreters()


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("version", VERSIONS)
def test_cpython_shared_memory_tests_pass_against_the_drop_in(registry_path, interpreters,
                                                              version, start_method):
    found, stale = interpreters
    if version not in found:
        pytest.skip(stale.get(version) or (
            f"no Python {version} with mshare and its test package installed; make a venv "
            "next to this one or list its python in MSHARE_STDLIB_PYTHONS"))
    result = subprocess.run([found[version], ADAPTER, start_method], capture_output=True,
                            text=True, cwd="/", timeout=600, env=_environment())
    ran = re.search(r"^Ran (\d+) tests?", result.stderr + result.stdout, re.MULTILINE)
    assert ran and int(ran.group(1)) > 0, result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
