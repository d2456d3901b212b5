"""Test utilities: child interpreters (optionally as another user) and /dev/shm views."""

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap

import mshare

SHM = "/dev/shm"
# One copy per checkout, so that test sessions of different checkouts can run side by side;
# the session removes it at its end (conftest).
_CHECKOUT = hashlib.blake2b(os.path.dirname(mshare.__file__).encode(), digest_size=4).hexdigest()
WORLD_READABLE_SITE = f"/tmp/mshare-tests/site-{_CHECKOUT}"
# This interpreter's installation, copied where any user can run it when it lives under a
# home only root may enter (pyenv in /root): children of other users must run the very
# Python the compiled modules were built for.
WORLD_READABLE_PYTHON = f"/tmp/mshare-tests/python-{_CHECKOUT}"


def shm_objects_of(registry_id):
    """Data objects in /dev/shm that belong to the registry with this id."""
    return sorted(f for f in os.listdir(SHM) if f"-{registry_id}-" in f)


def huge_page_objects_of(registry_id):
    """Data objects on hugetlbfs and tmpfs mounts (other than /dev/shm) that belong to the
    registry with this id, as paths."""
    from mshare import machine

    found = []
    for mount in machine.visible_mounts(machine.HUGETLBFS) + machine.visible_mounts(machine.TMPFS):
        if mount.mount_point == SHM:
            continue
        try:
            names = os.listdir(mount.mount_point)
        except OSError:
            continue
        found += [os.path.join(mount.mount_point, f) for f in names if f"-{registry_id}-" in f]
    return sorted(found)


def child_python_path():
    """PYTHONPATH that makes children import the very mshare this suite tests."""
    return os.pathsep.join([os.path.dirname(os.path.dirname(mshare.__file__)), os.path.dirname(__file__)])


def start_python(code, *, user=None, group=None, groups=(), env=None, **popen_options):
    """Start ``code`` in a fresh interpreter without waiting (for races and kills); as
    ``user``/``group`` when given (root only).

    It runs from ``/`` so that a source checkout in the working directory never shadows
    the installed package."""
    interpreter, environment = _interpreter_for(user, env)
    return subprocess.Popen(
        [interpreter, "-c", textwrap.dedent(code)], cwd="/", env=environment,
        user=user, group=group, extra_groups=list(groups) if user is not None else None,
        **popen_options,
    )


def run_python(code, *, user=None, group=None, groups=(), timeout=60, check=True, env=None):
    """Run ``code`` in a fresh interpreter; as ``user``/``group`` when given (root only).

    Returns the CompletedProcess; with ``check`` a non-zero exit fails with its stderr.
    """
    interpreter, environment = _interpreter_for(user, env)
    result = subprocess.run(
        [interpreter, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=environment,
        user=user, group=group, extra_groups=list(groups) if user is not None else None,
        cwd="/",
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"child exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def run_with_private_mounts(mounts, code, timeout=120):
    """Run ``code`` in a child with a private mount namespace (root only), once the shell
    commands ``mounts`` have run in it: what it mounts nobody else sees, and it goes
    with the child. Returns the CompletedProcess; a non-zero exit fails."""
    script = f"{mounts} && exec {sys.executable} -c \"$0\""
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
         textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, cwd="/",
        env=dict(os.environ, PYTHONPATH=child_python_path()),
    )
    assert result.returncode == 0, f"child exited {result.returncode}\n{result.stderr}"
    return result


def _interpreter_for(user, env):
    """The interpreter and environment a child runs with: another user gets one any
    user can run, importing the world-readable copy of mshare."""
    environment = dict(os.environ if env is None else env)
    if user is None:
        return sys.executable, environment
    environment["PYTHONPATH"] = WORLD_READABLE_SITE
    environment.pop("PYTHONHOME", None)
    interpreter = _interpreter_anyone_runs()
    if interpreter.startswith(WORLD_READABLE_PYTHON):
        # A copied interpreter built with a shared libpython must load the copy of it.
        environment["LD_LIBRARY_PATH"] = os.pathsep.join(
            [os.path.join(WORLD_READABLE_PYTHON, "lib"), environment.get("LD_LIBRARY_PATH", "")])
    return interpreter, environment


def _interpreter_anyone_runs():
    """This interpreter where it is, if every user can run it; else its world-readable copy."""
    executable = os.path.realpath(sys.executable)
    if _world_usable(executable) and _world_usable(os.path.realpath(sys.base_prefix)):
        return executable
    return os.path.join(WORLD_READABLE_PYTHON, "bin", os.path.basename(executable))


def _world_usable(path):
    """True when any user may read and enter (or run) ``path`` and enter every directory above."""
    while True:
        if os.stat(path).st_mode & 0o005 != 0o005:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


def _copy_interpreter():
    """Copy this interpreter's installation (its binary, libpython and standard library;
    not its site-packages or tests) to ``WORLD_READABLE_PYTHON``."""
    prefix = os.path.realpath(sys.base_prefix)
    shutil.rmtree(WORLD_READABLE_PYTHON, ignore_errors=True)
    executable = os.path.realpath(sys.executable)
    os.makedirs(os.path.join(WORLD_READABLE_PYTHON, "bin"))
    shutil.copy2(executable, os.path.join(WORLD_READABLE_PYTHON, "bin", os.path.basename(executable)))
    shutil.copytree(os.path.join(prefix, "lib"), os.path.join(WORLD_READABLE_PYTHON, "lib"),
                    symlinks=True, ignore=shutil.ignore_patterns(
                        "site-packages", "test", "tests", "idlelib", "tkinter", "ensurepip",
                        "__pycache__", "*.a", "pkgconfig"))
    _make_world_readable(WORLD_READABLE_PYTHON)


def _imported_by_children():
    """What children of other users import besides mshare: posix_ipc (a dependency) and,
    where installed, numpy with the shared libraries its wheel carries beside it."""
    posix_ipc = importlib.util.find_spec("posix_ipc")
    yield (posix_ipc.submodule_search_locations[0] if posix_ipc.submodule_search_locations
           else posix_ipc.origin)
    numpy = importlib.util.find_spec("numpy")
    if numpy is not None:
        package = numpy.submodule_search_locations[0]
        yield package
        libraries = os.path.join(os.path.dirname(package), "numpy.libs")
        if os.path.isdir(libraries):
            yield libraries


def prepare_world_readable_site():
    """Copy mshare, posix_ipc and numpy where any user can import them, and this
    interpreter where any user can run it unless it is so already (idempotent)."""
    if os.path.isdir(os.path.join(WORLD_READABLE_SITE, "mshare")):
        shutil.rmtree(WORLD_READABLE_SITE)
    os.makedirs(WORLD_READABLE_SITE)
    package = os.path.dirname(mshare.__file__)
    shutil.copytree(package, os.path.join(WORLD_READABLE_SITE, "mshare"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.html"))
    for source in _imported_by_children():
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(WORLD_READABLE_SITE, os.path.basename(source)),
                            ignore=shutil.ignore_patterns("__pycache__", "tests"))
        else:
            shutil.copy(source, WORLD_READABLE_SITE)
    _make_world_readable(WORLD_READABLE_SITE)
    os.chmod(os.path.dirname(WORLD_READABLE_SITE), 0o755)
    if _interpreter_anyone_runs() != os.path.realpath(sys.executable):
        _copy_interpreter()


def remove_world_readable_copies():
    """Remove what ``prepare_world_readable_site`` made."""
    for path in (WORLD_READABLE_SITE, WORLD_READABLE_PYTHON):
        shutil.rmtree(path, ignore_errors=True)


def _make_world_readable(top):
    """Everyone may read everything under ``top`` and run what its owner may run."""
    for root, directories, files in os.walk(top):
        os.chmod(root, 0o755)
        for file in files:
            path = os.path.join(root, file)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o100 else 0o644)


def run_threads(target, count, timeout=300):
    """Run ``target(index)`` in ``count`` threads; returns what they raised. A thread still
    running after ``timeout`` seconds fails the test as stuck."""
    import threading

    errors = []

    def guarded(index):
        try:
            target(index)
        except BaseException as error:  # reported to the caller
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck"
    return errors


def mapped_at(addr):
    """True while this process has a mapping starting at ``addr`` (``/proc/self/maps``)."""
    with open("/proc/self/maps") as maps:
        return any(int(line.split("-")[0], 16) == addr for line in maps)
