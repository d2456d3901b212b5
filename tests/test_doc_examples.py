"""Every example in the README and the docs runs as written (``tests/doc_examples.py`` says
how each block is read): programs as separate processes, their output as the page shows it,
and nothing left behind in the registry, ``/dev/shm`` or the huge-page mounts."""

import os
from pathlib import Path

import pytest

from consistency import registry_files
from doc_examples import ExampleError, Page
from helpers import huge_page_objects_of, shm_objects_of

REPOSITORY = Path(__file__).resolve().parent.parent
PAGES = [REPOSITORY / "README.md", REPOSITORY / "bench" / "README.md",
         *sorted((REPOSITORY / "docs").glob("*.md"))]


def left_behind(registry_path):
    """The regions, data objects and registry files a page's programs did not remove."""
    if not os.path.isdir(registry_path):
        return []
    from mshare.registry import Registry

    with Registry(registry_path) as registry:
        objects = shm_objects_of(registry.registry_id) + huge_page_objects_of(registry.registry_id)
    return objects + registry_files(registry_path)


@pytest.mark.parametrize("path", PAGES, ids=lambda path: str(path.relative_to(REPOSITORY)))
def test_every_example_on_the_page_runs_and_cleans_up(path, registry_path, tmp_path):
    Page(path, tmp_path).run_all()
    assert left_behind(registry_path) == []


def test_the_two_processes_print_one_address(registry_path, tmp_path):
    runs = Page(REPOSITORY / "README.md", tmp_path).run_all()
    runs = {run.name: run.stdout.split() for run in runs}
    assert runs["writer.py"][0].startswith("0x")
    assert runs["reader.py"] == [runs["writer.py"][0], "1", "2", "b'hello'"]


def page(tmp_path, text):
    path = tmp_path / "page.md"
    path.write_text(text)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return Page(path, scratch)


PROGRAM = "```python\nprint('hi')\n```\n"


@pytest.mark.parametrize("text, problem", [
    (PROGRAM, "prints, but no output block"),
    (PROGRAM + "\n```output\nho\n```\n", "printed"),
    ("```python\nraise SystemExit(3)\n```\n", "exited 3"),
    ("```python\nimport sys; sys.stderr.write('careful')\n```\n", "careful"),
    ("```\nplain\n```\n", "no language"),
    ("```bash\nls\n```\n", "'bash'"),
    ("```output\nhi\n```\n", "follows no program"),
    ("<!-- example: run a.py -->\n", "followed by no block"),
    ("<!-- example: lint a.py -->\n" + PROGRAM, "unknown mark"),
    ("<!-- example: run a.py -->\n```sh\nls\n```\n", "never run"),
], ids=["unshown output", "wrong output", "exit code", "stderr", "no language",
        "unknown language", "stray output", "dangling mark", "unknown mark", "mark on shell"])
def test_a_page_that_breaks_the_rules_fails_naming_the_line(tmp_path, text, problem):
    with pytest.raises(ExampleError, match=problem):
        page(tmp_path, text).run_all()


def test_output_may_elide_with_dots_and_files_are_shared_by_later_programs(tmp_path):
    runs = page(tmp_path, (
        "<!-- example: file shared.py -->\n```python\nVALUE = 41\n```\n\n"
        "<!-- example: run user.py -->\n"
        "```python\nimport shared\nprint('x', shared.VALUE + 1, id(0))\n```\n\n"
        "```output\nx 42 ...\n```\n\n"
        "<!-- example: not a program, a fragment -->\n```python\nundefined_name\n```\n"
        "```sh\nfalse\n```\n")).run_all()
    assert [(run.name, run.stdout.split()[:2]) for run in runs] == [("user.py", ["x", "42"])]


def test_a_region_a_page_leaves_behind_is_found(registry_path, tmp_path):
    page(tmp_path, "```python\nimport mshare\nmshare.create('kept', 4096).close()\n```\n").run_all()
    assert "kept" in left_behind(registry_path)
    import mshare

    mshare.unlink("kept")
    assert left_behind(registry_path) == []
