"""Run from a source checkout whose compiled core is not built, ``import mshare`` finds
the checkout before the installed package: it must say so in one clear error."""

import os
import shutil
import subprocess
import sys

import pytest

SOURCE_PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mshare")


@pytest.fixture
def unbuilt_checkout(tmp_path):
    """A copy of the source package without any compiled module, as a fresh clone has it."""
    if not os.path.exists(os.path.join(SOURCE_PACKAGE, "_core.pyx")):
        pytest.skip("these tests run from a source checkout")
    shutil.copytree(SOURCE_PACKAGE, tmp_path / "mshare",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.c"))
    return tmp_path


@pytest.mark.parametrize("command", [["-c", "import mshare"], ["-m", "mshare", "ls"]])
def test_importing_the_unbuilt_source_tree_says_what_to_do(unbuilt_checkout, command):
    result = subprocess.run([sys.executable, *command], cwd=unbuilt_checkout, capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=""))
    assert result.returncode == 1
    assert (f"ImportError: you are importing mshare from its source tree at {unbuilt_checkout}/mshare "
            "where the compiled core is not built; run from another directory or `pip install .`"
            ) in result.stderr
    assert "ModuleNotFoundError" not in result.stderr

