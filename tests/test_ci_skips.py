"""The CI skip policy (tests/ci_skips.py): on CI a skip fails unless it is allowed."""

import subprocess
import sys
import textwrap

import pytest

from ci_skips import allowed_skips, skip_allowed
from helpers import child_python_path


def run_pytest(tmp_path, ci):
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["ci_skips"]\n')
    (tmp_path / "test_skipping.py").write_text(textwrap.dedent("""
        import pytest

        def test_that_skips():
            pytest.skip("the machine lacks something")
    """))
    environment = {"PYTHONPATH": child_python_path(), "PATH": "/usr/bin:/bin"}
    if ci:
        environment["MSHARE_CI"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)


def test_an_unlisted_skip_fails_on_ci_and_only_there(tmp_path):
    on_ci = run_pytest(tmp_path, ci=True)
    assert on_ci.returncode == 1, on_ci.stdout
    assert "allowed_skips.txt does not allow it" in on_ci.stdout
    assert "the machine lacks something" in on_ci.stdout
    elsewhere = run_pytest(tmp_path, ci=False)
    assert elsewhere.returncode == 0 and "1 skipped" in elsewhere.stdout, elsewhere.stdout


def test_allowed_skips_need_a_reason(tmp_path):
    listing = tmp_path / "allowed.txt"
    listing.write_text("# comment\n\ntests/test_a.py::test_b -- needs a GPU\ntests/test_c.py::*\n")
    with pytest.raises(ValueError, match="allowed.txt:4: expected 'TEST-ID-PATTERN -- REASON'"):
        allowed_skips(str(listing))
    listing.write_text("tests/test_a.py::test_b[*] -- needs a GPU\n")
    allowed = allowed_skips(str(listing))
    assert allowed == {"tests/test_a.py::test_b[*]": "needs a GPU"}
    assert skip_allowed("tests/test_a.py::test_b[x]", allowed)
    assert not skip_allowed("tests/test_a.py::test_c", allowed)


def test_the_allowed_skips_file_parses():
    allowed_skips()
