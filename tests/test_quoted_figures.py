"""Every figure the READMEs quote from the benchmark appears in the run they cite.

Between ``<!-- figures from results/results.md -->`` and ``<!-- end of figures -->`` (in
README.md, bench/README.md and every page under docs/) each number must be one that
``bench/results/results.md`` prints, so a table copied by hand cannot drift from the saved run.
"""

import re
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "bench" / "results" / "results.md"
QUOTING = [REPOSITORY / "README.md", REPOSITORY / "bench" / "README.md",
           *sorted((REPOSITORY / "docs").glob("*.md"))]
BLOCK = re.compile(r"<!-- figures from results/results\.md -->(.*?)<!-- end of figures -->", re.S)
# A figure as the report prints it: 2,038 / 62.8 / 72× / 0.031×.
FIGURE = re.compile(r"(?<![\w.,])\d[\d,]*(?:\.\d+)?×?(?![\w.])")


def figures(text):
    return FIGURE.findall(text)


def quoted_blocks(path):
    return BLOCK.findall(path.read_text())


def test_figures_are_read_as_the_report_prints_them():
    assert figures("| 2,038 | 62.8 | 72× | 0.031× | 1 GiB | 4a. |") == [
        "2,038", "62.8", "72×", "0.031×", "1"]


@pytest.mark.parametrize("path", QUOTING, ids=lambda path: str(path.relative_to(REPOSITORY)))
def test_every_quoted_figure_is_in_the_saved_run(path):
    printed = set(figures(RESULTS.read_text()))
    for block in quoted_blocks(path):
        missing = [figure for figure in figures(block) if figure not in printed]
        assert not missing, f"{path.name} quotes figures that {RESULTS.name} does not print: {missing}"


@pytest.mark.parametrize("page", ["README.md", "bench/README.md", "docs/hugepages.md", "docs/inside.md"])
def test_the_pages_that_quote_the_run_still_do(page):
    # The check above must have something to check: the front door's page-table figures,
    # the benchmark suite's tables, and the huge-page and lock tables that moved to docs/.
    assert quoted_blocks(REPOSITORY / page)
