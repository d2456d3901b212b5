"""The public API is typed: a user's program that uses all of it (tests/typing_user.py)
passes mypy --strict and pyright strict with no error, and it runs; and pyright finds the
package's exported symbols type-complete to at least ``MINIMUM_COMPLETENESS``."""

import ast
import importlib
import json
import os
import subprocess
import sys

from collections import defaultdict

import pytest

import mshare

USER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "typing_user.py")


def checked(command):
    # From "/", so that a source checkout never stands in for the installed package.
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd="/")


# The share of exported symbols whose type pyright knows (`pyright --verifytypes`).
MINIMUM_COMPLETENESS = 0.95

COMPILED = ["_allocator", "_core", "_mutex", "_queue", "_shared", "_slots", "_waiting"]


@pytest.mark.parametrize("module_name", COMPILED)
def test_each_compiled_module_has_a_stub_naming_what_it_exports(module_name):
    module = importlib.import_module(f"mshare.{module_name}")
    stub = os.path.join(os.path.dirname(mshare.__file__), f"{module_name}.pyi")
    declared = {target.id if isinstance(target, ast.Name) else target.name
                for node in ast.parse(open(stub).read()).body
                for target in ([node.target] if isinstance(node, ast.AnnAssign) else [node])
                if isinstance(target, (ast.Name, ast.ClassDef, ast.FunctionDef))}
    declared.discard("_T")  # a type variable of the stub itself
    # Nothing declared that the module lacks, and every class and function it defines declared.
    assert sorted(declared - set(vars(module))) == []
    defined = {name for name, value in vars(module).items() if not name.startswith("__")
               and callable(value) and getattr(value, "__module__", None) == module.__name__}
    assert sorted(defined - declared - {"_forget_after_fork"}) == []


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


def _incomplete_by_module(report):
    """Exported symbols whose type is unknown or ambiguous, by module, each with why."""
    modules = {module["name"] for module in report["modules"]}
    found = defaultdict(list)
    for symbol in report["symbols"]:
        if symbol["isExported"] and not (symbol["isTypeKnown"] and not symbol["isTypeAmbiguous"]):
            reasons = [" ".join(diagnostic["message"].split()) for diagnostic in symbol["diagnostics"]]
            module = symbol["name"]
            while module not in modules:
                module = module.rpartition(".")[0]
            found[module].append(f"{symbol['name']}: {'; '.join(reasons)[:200]}")
    return found


def test_installed_package_is_type_complete():
    result = checked([sys.executable, "-m", "pyright", "--verifytypes", "mshare", "--ignoreexternal",
                      "--outputjson", "--pythonpath", sys.executable])
    report = json.loads(result.stdout)["typeCompleteness"]
    # The package checked is the one these tests import, not a source tree.
    assert report["packageRootDirectory"] == os.path.dirname(mshare.__file__)
    counts = report["exportedSymbolCounts"]
    assert counts["withKnownType"] > 0
    incomplete = _incomplete_by_module(report)
    listing = "\n".join(f"{module} ({len(names)}):\n  " + "\n  ".join(names)
                        for module, names in sorted(incomplete.items()))
    score = report["completenessScore"]
    assert score >= MINIMUM_COMPLETENESS, (
        f"pyright --verifytypes mshare: {score:.1%} type-complete, below "
        f"{MINIMUM_COMPLETENESS:.0%} ({counts}); incomplete exported symbols:\n{listing}")
