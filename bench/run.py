"""Run the whole suite and write its results: `python -m bench [--smoke] [--output DIR]`.

Writes DIR/benchmark.json (raw pytest-benchmark), DIR/results.md (figures and ratios, the
machine) and DIR/*.png (scale curves). The full run goes to bench/results/; a smoke run
(tiny sizes, two processes, seconds long, for CI) goes to build/bench-smoke/ so it never
overwrites the figures worth quoting. Arguments after `--` go to pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pytest

from bench.machine import source_problem, source_revision

HERE = Path(__file__).resolve().parent


class SkipReasons:
    """A pytest plugin that keeps why a figure was not measured, for the report."""

    def __init__(self):
        self.reasons: list[str] = []

    def pytest_collectreport(self, report):
        # A whole file skipped at import (pytest.importorskip) is reported here, never as a
        # test: without this its figures would vanish from results.md without a word.
        if report.skipped and isinstance(report.longrepr, tuple):
            self.reasons.append(f"{report.nodeid}: "
                                f"{report.longrepr[2].removeprefix('Skipped: ')}")

    def pytest_runtest_logreport(self, report):
        if report.skipped and isinstance(report.longrepr, tuple):
            self.reasons.append(report.longrepr[2].removeprefix("Skipped: "))
        elif report.failed:
            message = getattr(report.longrepr, "reprcrash", None)
            self.reasons.append(f"{report.nodeid} FAILED: {message.message if message else ''}")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and few processes (also: MSHARE_BENCH_SMOKE=1)")
    parser.add_argument("--output", type=Path, help="where results go")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="measure a tree with uncommitted changes (results.md says so loudly)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    arguments = parser.parse_args(argv)
    arguments.smoke = arguments.smoke or os.environ.get("MSHARE_BENCH_SMOKE") == "1"
    if arguments.output is None:
        arguments.output = HERE.parent / "build" / "bench-smoke" if arguments.smoke \
            else HERE / "results"
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse(sys.argv[1:] if argv is None else argv)
    if arguments.smoke:
        os.environ["MSHARE_BENCH_SMOKE"] = "1"
    # Figures anyone can repeat come from a commit: a full run refuses anything else.
    problem = source_problem(source_revision())
    if problem and not (arguments.smoke or arguments.allow_dirty):
        print(f"refusing to benchmark: {problem}; commit first (or pass --allow-dirty, and "
              "results.md will say the figures cannot be quoted)", file=sys.stderr)
        return 2
    output: Path = arguments.output
    output.mkdir(parents=True, exist_ok=True)
    raw = output / "benchmark.json"
    # append: the checkout goes to the end of sys.path, so the installed mshare (with its
    # compiled core) is the one measured, never an unbuilt source tree.
    pytest_args = [str(HERE), "-p", "no:cacheprovider", "-rs", "--import-mode=append",
                   f"--benchmark-json={raw}",
                   "--benchmark-columns=min,median,max,rounds", "--benchmark-sort=name"]
    if arguments.smoke:
        pytest_args += ["--benchmark-max-time=0.02", "--benchmark-min-rounds=2",
                        "--benchmark-warmup=off"]
    skips = SkipReasons()
    code = pytest.main(pytest_args + arguments.pytest_args, plugins=[skips])
    if not raw.exists():
        return int(code) or 1

    # Imported late: matplotlib is only needed once there are numbers to draw.
    from bench import plots, report

    data = report.load(raw)
    # Kept with the raw data, so results.md can be rendered again from the JSON alone.
    data["mshare_bench_skipped"] = sorted(set(skips.reasons))
    raw.write_text(json.dumps(data, indent=4))
    drawn = plots.draw(data, output)
    (output / "results.md").write_text(report.render(data, drawn))
    print(f"results: {output / 'results.md'}, {raw}, {len(drawn)} plots")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
