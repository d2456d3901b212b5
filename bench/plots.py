"""The scale curves (figures 6 and 8) as PNG files: how each cost grows with region size and processes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from bench.machine import GiB, KiB, MiB  # noqa: E402
from bench.report import records_of  # noqa: E402
from bench.scale import DEFAULT_MOST  # noqa: E402


def _series(records: list[dict], x_key: str, y, where=lambda extra: True) -> dict:
    """backend -> sorted [(x, y)] from the records of one benchmark group."""
    series: dict[str, list] = {}
    for record in records:
        extra = record["extra_info"]
        if where(extra):
            series.setdefault(extra["backend"], []).append((extra[x_key], y(record)))
    return {name: sorted(points) for name, points in series.items()}


def _plot(path: Path, title: str, xlabel: str, ylabel: str, series: dict,
          xscale: str = "log", yscale: str = "log", x_in=lambda x: x) -> Path | None:
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, points in series.items():
        style = "-o" if name.startswith("mshare") else "--s"
        axes.plot([x_in(x) for x, _ in points], [y for _, y in points], style, label=name)
    xs = sorted({x_in(x) for points in series.values() for x, _ in points})
    ys = [y for points in series.values() for _, y in points]
    axes.set_xscale(xscale, **({"base": 2} if xscale == "log" else {}))
    axes.set_xticks(xs)
    axes.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axes.xaxis.set_minor_locator(ticker.NullLocator())
    if yscale == "symlog" and min(ys) > 0 and max(ys) < 20 * min(ys):
        yscale = "linear"  # one decade: a log axis would show no labels at all
    # Page tables of shared mappings can be zero or, within noise, below it.
    axes.set_yscale(yscale, **({"linthresh": 1.0} if yscale == "symlog" else {}))
    if yscale != "log" and min(ys) >= 0:
        axes.set_ylim(bottom=0)
    return _save(figure, axes, path, title=title, xlabel=xlabel, ylabel=ylabel)


def _save(figure, axes, path: Path, **labels: str) -> Path:
    """Label, grid and write one figure; the same finish for every plot."""
    axes.set(**labels)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _scale_plot(path: Path, records: list[dict]) -> Path | None:
    """Figure 10: system page tables against processes; a peer's line past what was
    measured is extrapolated (linear in processes) and drawn and labelled as such."""
    series = _series(records, "processes", lambda r: r["extra_info"]["pagetables_growth_kib"] / KiB)
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    most = max(DEFAULT_MOST, max(x for points in series.values() for x, _ in points))
    for name, points in series.items():
        size = next(r["extra_info"]["size"] for r in records if r["extra_info"]["backend"] == name)
        label = f"{name}, {size // GiB} GiB" if size >= GiB else f"{name}, {size // MiB} MiB"
        style = "-o" if name.startswith("mshare") else "--s"
        axes.plot([x for x, _ in points], [y for _, y in points], style, label=label)
        last_x, last_y = points[-1]
        if last_x < most and not name.startswith("mshare"):
            axes.plot([last_x, most], [last_y, last_y * most / last_x], ":", color="grey",
                      label=f"{name}, extrapolated past {last_x} processes")
    axes.set_xscale("log")
    axes.set_yscale("symlog", linthresh=0.1)
    axes.set_ylim(bottom=0)
    return _save(figure, axes, path,
                 title="Page tables of N processes mapping one region and reading every page",
                 xlabel="processes", ylabel="system page tables grown (MiB)")


def draw(data: dict, directory: Path) -> list[Path]:
    """Write every curve the run has data for; return the files written."""
    in_mib = lambda size: size / MiB  # noqa: E731
    attach = records_of(data, "3 attach and touch")
    by_processes = records_of(data, "4a page tables by processes")
    by_size = records_of(data, "4b page tables by region size")
    scan = records_of(data, "5 parallel scan")
    written = [
        _plot(directory / "attach_touch_by_size.png",
              "New process: attach a resident region and touch every page",
              "region size (MiB)", "seconds (inside the new process)",
              _series(attach, "size", lambda r: r["extra_info"]["median_inside_s"]),
              x_in=in_mib),
        _plot(directory / "attach_touch_by_processes.png",
              "N processes attach and touch at once (1 GiB or less)",
              "processes", "median seconds per process",
              _series(by_processes, "processes", lambda r: r["extra_info"]["median_inside_s"])),
        _plot(directory / "pagetables_by_processes.png",
              "Page tables per process per GiB, by processes",
              "processes attached", "KiB per process per GiB",
              _series(by_processes, "processes",
                      lambda r: r["extra_info"]["kib_per_process_per_gib"]),
              yscale="symlog"),
        _plot(directory / "pagetables_by_size.png",
              "Page tables per process, by region size",
              "region size (MiB)", "KiB per process",
              _series(by_size, "size", lambda r: r["extra_info"]["kib_per_process_per_gib"]
                      * r["extra_info"]["size"] / GiB),
              yscale="symlog", x_in=in_mib),
        _plot(directory / "scan_by_workers.png",
              "Parallel scan, repeat pass (pages already mapped)",
              "workers", "GB/s (aggregate)",
              _series(scan, "workers", lambda r: r["extra_info"]["gb_per_s"],
                      where=lambda extra: extra["scan_pass"] == "repeat"),
              xscale="linear", yscale="linear"),
        _scale_plot(directory / "scale_pagetables_by_processes.png",
                    records_of(data, "10 scale: processes mapping one region")),
    ]
    return [path for path in written if path is not None]
