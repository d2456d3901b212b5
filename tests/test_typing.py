"""The public API is typed: a user's program that uses all of it (tests/typing_user.py)
passes mypy --strict and pyright strict with no error, and it runs."""

import json
import os
import subprocess
import sys

USER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "typing_user.py")


def checked(command):
    # From "/", so that a source checkout never stands in for the installed package.
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd="/")


def test_user_script_passes_mypy_strict():
    result = checked([sys.executable, "-m", "mypy", "--strict", "--cache-dir", os.devnull,
                      "--python-executable", sys.executable, USER_SCRIPT])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found")


def test_user_script_passes_pyright_strict():
    # The script's first line asks pyright for strict mode.
    result = checked([sys.executable, "-m", "pyright", "--outputjson", "--pythonpath",
                      sys.executable, "--level", "warning", "-p", os.devnull, USER_SCRIPT])
    report = json.loads(result.stdout)
    assert report["generalDiagnostics"] == [] and report["summary"]["filesAnalyzed"] == 1
    assert result.returncode == 0


def test_user_script_runs():
    result = checked([sys.executable, USER_SCRIPT])
    assert result.returncode == 0, result.stderr
    assert "psm_" in result.stdout
