"""A benchmark file skipped as a whole, as the Ray one is without the Ray extra, is named
with its reason in what results.md lists as not measured, instead of vanishing."""

import ast
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent

RUN = """
import sys
import pytest
from bench.run import SkipReasons

skips = SkipReasons()
pytest.main([sys.argv[1], "-q", "-p", "no:cacheprovider"], plugins=[skips])
print(repr(skips.reasons))
"""


def test_a_file_skipped_at_import_and_a_skipped_test_are_both_reported(tmp_path):
    (tmp_path / "test_needs_extra.py").write_text(
        "import pytest\n"
        "pytest.importorskip('mshare_no_such_extra', reason='the extra is not installed')\n"
        "def test_never(): pass\n")
    (tmp_path / "test_skips_one.py").write_text(
        "import pytest\n"
        "def test_skipped(): pytest.skip('no pool here')\n")
    run = subprocess.run([sys.executable, "-c", RUN, str(tmp_path)], cwd=REPOSITORY,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    reasons = ast.literal_eval(run.stdout.strip().splitlines()[-1])
    assert any("test_needs_extra.py" in reason and "the extra is not installed" in reason
               for reason in reasons), reasons
    assert "no pool here" in reasons, reasons
