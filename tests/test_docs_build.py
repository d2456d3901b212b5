"""The documentation site builds with warnings as errors: every page in a table of contents,
every link and heading anchor resolved, every docstring of the API reference well formed."""

import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def build(source, output):
    # From outside the checkout, so that the API reference imports the installed package.
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-E", "-b", "html",
         str(source), str(output / "html")],
        cwd=output, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)


def test_the_site_builds_without_a_warning(tmp_path):
    finished = build(DOCS, tmp_path)
    assert finished.returncode == 0 and not finished.stderr, finished.stderr
    api = (tmp_path / "html" / "api.html").read_text()
    # The reference is generated from the compiled package, not left empty.
    for name in ("mshare.create", "mshare.Region", "mshare.Region.lock",
                 "mshare.shared_memory.SharedMemory", "mshare.ray.attach"):
        assert f'id="{name}"' in api, name


def test_a_broken_link_fails_the_build(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "conf.py").write_text((DOCS / "conf.py").read_text())
    (source / "index.md").write_text("# Index\n\nSee [a page that is not there](missing.md).\n")
    finished = build(source, tmp_path)
    assert finished.returncode != 0
    assert "missing.md" in finished.stderr
