"""``MSHARE_TEST_BUSY=N``: N CPU-bound processes run beside the whole test session.

The suite must prove its properties under load, not only on an idle machine; CI
(``.ci/run``) sets 2, as many busy loops as the machine has cores. They start before
the first test and are stopped after the last one, whatever the outcome.
"""

import os
import subprocess
import sys

ENVIRONMENT_VARIABLE = "MSHARE_TEST_BUSY"
_BUSY_LOOP = "while True:\n    pass\n"
_running = []


def busy_count():
    value = os.environ.get(ENVIRONMENT_VARIABLE, "0")
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"{ENVIRONMENT_VARIABLE} must be a whole number, not {value!r}") from None
    if count < 0:
        raise ValueError(f"{ENVIRONMENT_VARIABLE} must not be negative, got {count}")
    return count


def pytest_configure(config):
    for _ in range(busy_count()):
        _running.append(subprocess.Popen([sys.executable, "-c", _BUSY_LOOP], cwd="/"))


def pytest_unconfigure(config):
    while _running:
        process = _running.pop()
        process.kill()
        process.wait()


def pytest_report_header(config):
    if _running:
        return f"mshare tests: {len(_running)} busy processes run beside the suite " \
               f"(pids {' '.join(str(process.pid) for process in _running)})"
    return None
