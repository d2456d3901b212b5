"""Run CPython's own tests of ``multiprocessing.shared_memory`` against mshare's drop-in.

    python tests/stdlib_shared_memory.py [fork|spawn|forkserver]

Runs ``_TestSharedMemory`` from the running interpreter's ``test._test_multiprocessing``
(the installed copy, never a copy of its code) with ``mshare.shared_memory`` put in place
of ``multiprocessing.shared_memory`` and of ``multiprocessing.managers.SharedMemoryManager``.
Child interpreters the tests start (``sys.executable -c ...``, spawned processes) start
through this file too (``--child``), so they see the same substitution. Prints one line
per test that did not pass, ``NOT PASSED <test> <reason>``, and exits 0 when exactly the
tests in ``EXPECTED_NOT_PASSING`` did not pass.
"""

import os
import runpy
import shutil
import stat
import sys
import tempfile
import unittest

# Tests that assert what mshare changes on purpose (docs/shared_memory.md lists them).
EXPECTED_NOT_PASSING = {
    # An attacher with track=True must unlink the block when it exits: gh-82300, the trap.
    "test_shared_memory_tracking",
}
REAL_PYTHON = "MSHARE_STDLIB_ADAPTER_PYTHON"
# Interpreter options that take a value, as `python` parses them.
OPTIONS_WITH_VALUE = {"-X", "-W", "-Q"}


def substitute_mshare():
    """Make ``multiprocessing.shared_memory`` and the stdlib's manager mshare's."""
    import multiprocessing
    import multiprocessing.managers

    from mshare import shared_memory

    sys.modules["multiprocessing.shared_memory"] = shared_memory
    multiprocessing.shared_memory = shared_memory
    multiprocessing.managers.shared_memory = shared_memory
    multiprocessing.managers.SharedMemoryManager = shared_memory.SharedMemoryManager


def launcher_path():
    """An executable that starts this interpreter through ``--child``: the tests'
    ``sys.executable``."""
    directory = tempfile.mkdtemp(prefix="mshare-stdlib-adapter-")
    path = os.path.join(directory, "python")
    with open(path, "w") as launcher:
        launcher.write(f'#!/bin/sh\nexec "${REAL_PYTHON}" {os.path.abspath(__file__)!r} --child "$@"\n')
    os.chmod(path, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return path


def run_as_python(arguments):
    """Do what ``python ARGUMENTS`` would, after the substitution."""
    substitute_mshare()
    index = 0
    while index < len(arguments) and arguments[index].startswith("-"):
        option = arguments[index]
        if option == "-c":
            code = arguments[index + 1]
            sys.argv = ["-c", *arguments[index + 2:]]
            exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
            return
        if option == "-m":
            sys.argv = [arguments[index + 1], *arguments[index + 2:]]
            runpy.run_module(arguments[index + 1], run_name="__main__", alter_sys=True)
            return
        index += 2 if option in OPTIONS_WITH_VALUE else 1
    sys.argv = arguments[index:]
    runpy.run_path(sys.argv[0], run_name="__main__")


def run_stdlib_tests(start_method):
    """Run the stdlib's test class: ``(names of its tests, {test that did not pass: why})``."""
    substitute_mshare()
    from test import _test_multiprocessing as stdlib_tests

    namespace = {"__name__": __name__}
    stdlib_tests.install_tests_in_module_dict(namespace, start_method, only_type="processes")
    case = namespace["WithProcessesTestSharedMemory"]
    test_names = set(unittest.defaultTestLoader.getTestCaseNames(case))
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(case)
    namespace["setUpModule"]()
    try:
        result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    finally:
        namespace["tearDownModule"]()
    not_passed = {}
    for test, trace in result.failures + result.errors:
        not_passed[test._testMethodName] = trace.strip().splitlines()[-1]
    for test in result.unexpectedSuccesses:
        not_passed[test._testMethodName] = "unexpected success"
    return test_names, not_passed


def main(arguments):
    if arguments[:1] == ["--child"]:
        run_as_python(arguments[1:])
        return 0
    start_method = arguments[0] if arguments else "fork"
    os.environ[REAL_PYTHON] = sys.executable
    sys.executable = launcher_path()
    try:
        test_names, not_passed = run_stdlib_tests(start_method)
    finally:
        shutil.rmtree(os.path.dirname(sys.executable), ignore_errors=True)
    for test, reason in sorted(not_passed.items()):
        print(f"NOT PASSED {test} {reason}")
    return 0 if set(not_passed) == EXPECTED_NOT_PASSING & test_names else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
