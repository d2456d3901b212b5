"""Fixtures shared by the whole suite: a private registry per test, random region names,
real child interpreters (also as other users), and a check that nothing is left behind."""

import contextlib
import os
import shutil
import signal
import sys
import uuid

import pytest

from consistency import registry_files
from helpers import (
    SHM,
    WORLD_READABLE_SITE,
    child_python_path,
    huge_page_objects_of,
    prepare_world_readable_site,
    remove_world_readable_copies,
    shm_objects_of,
)

BASE = "/tmp/mshare-tests"

# Several tests are about Ctrl-C. A suite started where SIGINT is ignored (a background job
# of a shell without job control, nohup) gets Python's handler back; the children it
# starts then begin with the default disposition and install their own.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
pytest_plugins = ["hugepage_fixtures", "busy_load", "ci_skips", "backends_under_test"]


@pytest.fixture(scope="session", autouse=True)
def _base_directory():
    # World-traversable so that children running as other users reach the registry.
    os.makedirs(BASE, exist_ok=True)
    os.chmod(BASE, 0o755)
    yield
    try:
        os.rmdir(BASE)
    except OSError:
        pass  # another session's registries are still in it


@pytest.fixture(scope="session", autouse=True)
def _children_import_this_mshare():
    # Every child interpreter (subprocess, spawn, forkserver) imports the package under
    # test, whether it is installed or built in place.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = child_python_path()
    yield
    if saved is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = saved


@pytest.fixture
def registry_path(monkeypatch):
    """A fresh, not yet existing ``MSHARE_ROOT`` (children inherit it)."""
    path = os.path.join(BASE, uuid.uuid4().hex)
    monkeypatch.setenv("MSHARE_ROOT", path)
    yield path
    try:
        _assert_clean(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def name():
    return f"region-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def user_site():
    """A copy of mshare and posix_ipc that unprivileged children can import (and of this
    interpreter if they could not run it), removed when the session ends."""
    if os.geteuid() != 0:
        pytest.skip("tests that drop to other users need root")
    prepare_world_readable_site()
    yield WORLD_READABLE_SITE
    remove_world_readable_copies()


def _assert_clean(path):
    """Nothing of this registry may survive the test: no data object, no range, no temp."""
    if not os.path.isdir(path):
        return
    from mshare.registry import Registry

    with Registry(path) as registry:
        leftovers = shm_objects_of(registry.registry_id) + huge_page_objects_of(registry.registry_id)
        files = registry_files(path)
    # Reported, then removed: a failing test must not leave its memory on the machine.
    for leftover in leftovers:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM, leftover))  # a full path stays as it is
    assert not leftovers, f"data objects left behind: {leftovers}"
    assert not files, f"registry entries left behind: {files}"


def pytest_report_header(config):
    return f"mshare tests: python {sys.version.split()[0]}, uid {os.geteuid()}"
