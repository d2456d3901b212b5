"""Turn the raw pytest-benchmark JSON into `results.md`: the machine, the sizes, every figure
and, for every mshare backend, how many times better it did than each peer in the same run.

`python -m bench.report bench/results/benchmark.json` rewrites the Markdown from a saved run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.machine import human, source_problem
from bench.scale_report import SCALE_GROUP, scale_section

BELOW_RESOLUTION = "below resolution"


@dataclass
class Figure:
    """One figure: which benchmark group, which parameter varies, how to read a value."""

    group: str
    title: str
    unit: str
    parameter: str  # the extra_info key the columns vary by
    lower_is_better: bool
    explanation: str
    metric: str  # an extra_info key, or "median" for pytest-benchmark's own median
    scale: float = 1.0

    def value(self, record: dict) -> float:
        if self.metric == "median":
            return record["stats"]["median"] * self.scale
        return record["extra_info"][self.metric] * self.scale

    def floor(self, record: dict) -> float:
        """The smallest value the system-wide counter can tell from zero."""
        if self.metric != "kib_per_process_per_gib":
            return 0.0
        return record["extra_info"]["resolution_kib_per_process_per_gib"]

    def column(self, record: dict) -> str:
        extra = record["extra_info"]
        if self.parameter == "workers":
            workers = extra["workers"]
            return f"{workers} worker{'s' if workers != 1 else ''}, {extra['scan_pass']} pass"
        key = extra[self.parameter]
        if self.parameter == "size":
            return human(key)
        return f"{key} process" if key == 1 else f"{key} processes"


FIGURES = [
    Figure("1 round trip", "1. Round trip: create + attach + close + unlink", "µs", "size", True,
           "A small region created, attached, closed and unlinked in one process (median).",
           "median", 1e6),
    Figure("2 attach", "2. Attach alone", "µs", "size", True,
           "Attach an existing region in a process that already imported the library (median).",
           "median", 1e6),
    Figure("3 attach and touch", "3. A new process attaches a resident region and touches "
           "every page", "ms", "size", True,
           "A fresh interpreter, started alone, attaches and reads + writes one byte in every "
           "page at the page size the kernel maps; timed inside that process (median of rounds).",
           "median_inside_s", 1e3),
    Figure("4a page tables by processes", "4a. Page tables per process per GiB, by processes",
           "KiB", "processes", True,
           "Growth of the system-wide PageTables while N live processes attach and touch the "
           "region, over their own baseline mapping nothing, per process per GiB (median of "
           "rounds; other programs on the machine move this counter too).",
           "kib_per_process_per_gib"),
    Figure("4a page tables by processes", "4a'. The same, from each process's own VmPTE",
           "KiB", "processes", True,
           "Exact and untouched by other programs, but it charges a shared page table to every "
           "process that uses it: for hugetlb it overstates, for 4 KiB pages it is the truth.",
           "vmpte_kib_per_process_per_gib"),
    Figure("4b page tables by region size", "4b. Page tables per process per GiB, by region "
           "size", "KiB", "size", True, "As 4a, with a fixed number of processes.",
           "kib_per_process_per_gib"),
    Figure("5 parallel scan", "5. Parallel scan", "GB/s", "workers", False,
           "N workers each sum the whole region as float64 at once; aggregate bytes over wall "
           "time. First pass: fresh mappings (page faults included); repeat: pages mapped.",
           "gb_per_s"),
    Figure("7a drop-in round trip", "7a. Drop-in: round trip, mshare.shared_memory against "
           "multiprocessing.shared_memory", "µs", "size", True,
           "SharedMemory(name, create=True) + SharedMemory(name) + close + unlink in one "
           "process, each class as a program calls it (median).", "median", 1e6),
    Figure("7b drop-in attach", "7b. Drop-in: attach alone", "µs", "size", True,
           "SharedMemory(name) of an existing block in a process that imported the module "
           "(median).", "median", 1e6),
    Figure("7c drop-in attach and touch", "7c. Drop-in: a new process attaches a resident "
           "block and touches every page", "ms", "size", True,
           "As figure 3, through each SharedMemory class (median of rounds).",
           "median_inside_s", 1e3),
    Figure("7d drop-in page tables", "7d. Drop-in: page tables per process per GiB", "KiB",
           "processes", True, "As figure 4a, through each SharedMemory class.",
           "kib_per_process_per_gib"),
] + [
    Figure(f"11 queue {measure}, {topology}", f"11{letters[index]}. Queue: {title}, {topology}",
           unit, "size", lower, explanation, metric)
    for topology, letters in (("1 to 1", "abcde"), ("4 to 4", "fghij"))
    for index, (measure, title, unit, lower, metric, explanation) in enumerate((
        ("throughput", "throughput", "GB/s", False, "gb_per_s",
         "Producers send numpy arrays as fast as they can; payload bytes over the time from "
         "the first producer's start to the last item's arrival (one run)."),
        ("throughput", "items per second", "items/s", False, "items_per_s",
         "The same runs, counted in items."),
        ("latency", "median latency", "µs", True, "median_latency_us",
         "Each producer sends one array every few milliseconds to consumers waiting for it; "
         "from the producer's clock before sending to the consumer's after receiving."),
        ("latency", "99th-percentile latency", "µs", True, "p99_latency_us",
         "The same runs, 99th percentile."),
        ("throughput", "payload bytes copied per item", "bytes", True,
         "bytes_copied_per_item",
         "By construction, not measured: how many times each way copies the payload "
         "(bench/queue_peers.py), times its size."),
    ))
]


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def records_of(data: dict, group: str) -> list[dict]:
    return [record for record in data["benchmarks"] if record["group"] == group]


ORDER = ["mshare-hugetlb", "mshare-thp", "mshare-shm", "mshare.shared_memory", "shared_memory",
         "posix_ipc", "SharedArray"]


def _order(backend: str) -> int:
    return ORDER.index(backend) if backend in ORDER else len(ORDER)


def _backends(records: list[dict], family: str) -> list[str]:
    names = {r["extra_info"]["backend"] for r in records if r["extra_info"]["family"] == family}
    return sorted(names, key=_order)


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def figure_tables(figure: Figure, records: list[dict]) -> list[str]:
    """The values (backend × parameter) and the ratios (mshare backend ÷ peer × parameter)."""
    columns: list[str] = []
    cells: dict[tuple[str, str], dict] = {}
    for record in records:
        column = figure.column(record)
        if column not in columns:
            columns.append(column)
        cells[(record["extra_info"]["backend"], column)] = record
    mshares, peers = _backends(records, "mshare"), _backends(records, "peer")
    floors = _backends(records, "floor")
    lines = [f"| backend ({figure.unit}) | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for backend in mshares + peers + floors:
        row = [reading(figure, cells[(backend, c)]) if (backend, c) in cells else "—"
               for c in columns]
        lines.append(f"| {backend} | " + " | ".join(row) + " |")
    if not (mshares and peers):
        return lines
    lines += ["", "How many times better mshare did than each peer in this run (> 1: mshare "
              "better):", "", "| mshare vs peer | " + " | ".join(columns) + " |",
              "|---" * (len(columns) + 1) + "|"]
    for mshare in mshares:
        for peer in peers:
            row = [ratio(figure, cells.get((mshare, c)), cells.get((peer, c))) for c in columns]
            lines.append(f"| {mshare} vs {peer} | " + " | ".join(row) + " |")
    split = [backend for backend in mshares + peers + floors
             if any("kernel_us" in cells[(backend, c)]["extra_info"]
                    for c in columns if (backend, c) in cells)]
    if split:
        lines += ["", "CPU time per call in the kernel and in user space (the interpreter and "
                  "the libraries), µs, over every call the benchmark made (`getrusage`):", "",
                  "| backend | " + " | ".join(f"{c}: kernel | {c}: user" for c in columns) + " |",
                  "|---" * (2 * len(columns) + 1) + "|"]
        for backend in split:
            row = []
            for c in columns:
                extra = cells[(backend, c)]["extra_info"] if (backend, c) in cells else {}
                row += [_number(extra[key]) if key in extra else "—"
                        for key in ("kernel_us", "user_us")]
            lines.append(f"| {backend} | " + " | ".join(row) + " |")
    if floors:
        lines += ["", f"The floor ({', '.join(floors)}: what no mshare backend's attach can "
                  "take less than) and each backend, in multiples of the other's time:", "",
                  "| multiple | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for floor in floors:
            for other in peers + mshares:
                over, under = (floor, other) if other in peers else (other, floor)
                row = [multiple(figure, cells.get((over, c)), cells.get((under, c)))
                       for c in columns]
                lines.append(f"| {over} ÷ {under} | " + " | ".join(row) + " |")
    return lines


def multiple(figure: Figure, over: dict | None, under: dict | None) -> str:
    """How many times ``under``'s time ``over`` takes."""
    if over is None or under is None or figure.value(under) <= 0:
        return "—"
    return _times(figure.value(over) / figure.value(under))


def below_resolution(figure: Figure, record: dict) -> bool:
    """A reading the counter cannot tell from zero (noise may even make it negative)."""
    floor = figure.floor(record)
    return bool(floor) and figure.value(record) < floor


def reading(figure: Figure, record: dict) -> str:
    return BELOW_RESOLUTION if below_resolution(figure, record) else _number(figure.value(record))


def ratio(figure: Figure, mshare: dict | None, peer: dict | None) -> str:
    if mshare is None or peer is None:
        return "—"
    # A reading below the counter's resolution is no number to divide by.
    if below_resolution(figure, mshare) or below_resolution(figure, peer):
        return BELOW_RESOLUTION
    ours, theirs = figure.value(mshare), figure.value(peer)
    if not figure.lower_is_better:
        return _times(ours / theirs)
    return _times(theirs / ours) if ours > 0 else "—"


def _times(ratio: float) -> str:
    if ratio >= 10:
        return f"{ratio:,.0f}×"
    return f"{ratio:.2f}×" if ratio >= 0.1 else f"{ratio:.2g}×"


def machine_section(data: dict) -> list[str]:
    bench = data["machine_info"]["mshare_bench"]
    machine, sizes = bench["machine"], bench["sizes"]
    lines = ["## Machine", "",
             f"- CPU: {machine['cpu']}, {machine['cores']} cores",
             f"- Memory: {machine['memory_total_gib']} GiB "
             f"({machine['memory_available_gib']} GiB available at the start)",
             f"- Kernel: Linux {machine['kernel']}, Python {machine['python']}",
             f"- Hugetlb pool: {machine['hugetlb_pool']}; hugetlbfs mounts: "
             f"{', '.join(machine['hugetlbfs_mounts']) or 'none'}",
             f"- THP for shmem: `{machine['thp_shmem_enabled']}`; /dev/shm free: "
             f"{machine['dev_shm_free_gib']} GiB",
             f"- mshare source: {source_line(machine.get('source'))}",
             "- Versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
             f"- Run: {data['datetime']}" + (" — SMOKE MODE, tiny sizes: not figures to quote"
                                             if bench["smoke"] else ""),
             "", "Sizes chosen for this machine:", ""]
    for key, value in sizes.items():
        if isinstance(value, list):
            value = ", ".join(human(v) if v >= 1024 else str(v) for v in value)
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 1024:
            value = human(value)
        lines.append(f"- {key}: {value}")
    return lines


def source_line(source) -> str:
    if not isinstance(source, dict):  # runs recorded before commits were kept
        return f"{source or 'unknown'} (not a recorded clean commit)"
    problem = source_problem(source)
    return f"commit {source['commit']}, clean tree" if problem is None else f"**{problem}**"


def provenance_warning(data: dict) -> list[str]:
    """A loud first paragraph when the figures cannot be traced to a clean commit."""
    source = data["machine_info"]["mshare_bench"]["machine"].get("source")
    problem = source_problem(source) if isinstance(source, dict) else \
        f"the run names its source only as {source!r}, not as a clean commit"
    if problem is None:
        return []
    return [f"> **NOT FIGURES TO QUOTE: {problem}.** Re-run `python -m bench` from a "
            "committed, clean tree.", ""]


def skipped_section(skipped: list[str]) -> list[str]:
    if not skipped:
        return []
    return ["## Not measured", ""] + [f"- {reason}" for reason in sorted(set(skipped))] + [""]


# The headline rows: (label, figure index in FIGURES, extra_info that picks the column).
SUMMARY = [
    ("round trip (µs)", 0, {}),
    ("attach alone (µs)", 1, {}),
    ("new process attaches + touches 1 GiB (ms)", 2, {"size": 1 << 30}),
    ("new process attaches + touches 4 GiB (ms)", 2, {"size": 4 << 30}),
    ("page tables, most processes (KiB per process per GiB)", 3, {}),
    ("parallel scan, repeat pass, most workers (GB/s)", 6, {"scan_pass": "repeat"}),
]


def summary(data: dict) -> list[str]:
    """One table of the headline figures, each backend a column, for the README."""
    picked = []
    for label, index, where in SUMMARY:
        figure = FIGURES[index]
        # A floor is no backend a user can pick: it stays in its figure's section.
        records = [r for r in records_of(data, figure.group)
                   if r["extra_info"].get("family") != "floor"
                   and all(r["extra_info"].get(k) == v for k, v in where.items())]
        if figure.parameter in ("workers", "processes") and records:
            most = max(r["extra_info"][figure.parameter] for r in records)
            records = [r for r in records if r["extra_info"][figure.parameter] == most]
            label = label.replace("most", str(most))
        if records:
            picked.append((label, figure, {r["extra_info"]["backend"]: r for r in records}))
    if not picked:
        return []
    backends = []
    for _, _, by_backend in picked:
        backends += [name for name in by_backend if name not in backends]
    backends.sort(key=_order)
    lines = ["| figure | " + " | ".join(backends) + " |", "|---" * (len(backends) + 1) + "|"]
    for label, figure, by_backend in picked:
        cells = [reading(figure, by_backend[name]) if name in by_backend else "—"
                 for name in backends]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


RAY_CONTENDERS = ["mshare long", "mshare/task", "mshare/owner", "actor", "ray.put"]
RAY_PATTERN = "mshare/task"   # the README's pattern: the speed-ups are about it


def ray_section(data: dict) -> list[str]:
    """bench/test_bench_ray.py: updates per second of each way to share mutable state."""
    records = [r for r in data["benchmarks"] if "ray_contender" in r["extra_info"]]
    if not records:
        return []
    cells = {(r["extra_info"]["array_bytes"], r["extra_info"]["tasks"], r["extra_info"]["ray_contender"]):
             r["extra_info"] for r in records}
    lines = ["## Ray: N tasks update disjoint slices of one array", "",
             "Updates per second (best of 5 timed runs); in brackets how many times faster the "
             f"`{RAY_PATTERN}` pattern was; data through Ray per round; state memory as the growth "
             "of Pss summed over the node's processes, state alive against state gone.", "",
             "| array | tasks | " + " | ".join(RAY_CONTENDERS) + " | through Ray / round | state memory |",
             "|---" * (len(RAY_CONTENDERS) + 4) + "|"]
    for array_bytes, tasks in sorted({key[:2] for key in cells}):
        row = cells.get((array_bytes, tasks, RAY_PATTERN))
        ours = row["updates_per_s"] if row else None
        values, through, memory = [], [], []
        for contender in RAY_CONTENDERS:
            cell = cells.get((array_bytes, tasks, contender))
            if cell is None:
                values.append("—")
                continue
            text = _number(cell["updates_per_s"])
            if ours and contender != RAY_PATTERN:
                text += f" ({_times(ours / cell['updates_per_s'])})"
            values.append(text)
            through.append(f"{cell['through_ray_per_round'] / (1 << 20):.0f}")
            memory.append(f"{cell['state_memory'] / (1 << 20):.1f}")
        lines.append(f"| {human(array_bytes)} | {tasks} | " + " | ".join(values) +
                     f" | {' / '.join(through)} MiB | {' / '.join(memory)} MiB |")
    return lines + ["", "Through Ray and state memory list the contenders in the column order.", ""]


LOCK_CONTENDERS = ["mshare", "multiprocessing.Lock", "posix_ipc.Semaphore"]


def _lock_records(data: dict) -> list[dict]:
    """bench/test_bench_lock.py's records of groups with a peer (the allocator has none)."""
    records = [r for r in data["benchmarks"] if "lock_contender" in r["extra_info"]]
    compared = {r["group"] for r in records if r["extra_info"]["lock_contender"] != "mshare"}
    return [r for r in records if r["group"] in compared]


def lock_section(data: dict) -> list[str]:
    """The lock as users write it, against the peers' locks."""
    records = _lock_records(data)
    if not records:
        return []
    medians = {(r["group"], r["extra_info"]["lock_contender"]): r["stats"]["median"] * 1e3
               for r in records}
    peers = LOCK_CONTENDERS[1:]
    lines = ["## Lock: uncontended and contended", "",
             "Median time of one round (ms; 10k operations uncontended, 20k shared by the "
             "processes when contended); mshare as the README writes it, `with region.lock():`, "
             "the peers as `with lock:`. Last columns: how many times faster mshare was.", "",
             "| benchmark | " + " | ".join(LOCK_CONTENDERS) + " | "
             + " | ".join(f"mshare vs {peer}" for peer in peers) + " |",
             "|---" * (len(LOCK_CONTENDERS) + len(peers) + 1) + "|"]
    for group in sorted({group for group, _ in medians}):
        ours = medians.get((group, "mshare"))
        cells = [_number(medians[group, who]) if (group, who) in medians else "—"
                 for who in LOCK_CONTENDERS]
        ratios = [_times(medians[group, peer] / ours) if ours and (group, peer) in medians
                  else "—" for peer in peers]
        lines.append(f"| {group} | " + " | ".join(cells + ratios) + " |")
    return lines + [""]


def other_groups(data: dict) -> list[str]:
    """Benchmarks outside the figures (the allocator, costs against live regions): median
    per round."""
    known = ({figure.group for figure in FIGURES} | {SCALE_GROUP}
             | {record["group"] for record in _lock_records(data)})
    records = [record for record in data["benchmarks"] if record["group"] not in known
               and "ray_contender" not in record["extra_info"]]
    if not records:
        return []
    lines = ["## Other benchmarks", "",
             "Median time of one benchmark round (each round loops many operations; see the "
             "benchmark's source for how many).", "", "| group | benchmark | median (ms) |",
             "|---|---|---|"]
    for record in sorted(records, key=lambda record: (record["group"] or "", record["name"])):
        lines.append(f"| {record['group']} | {record['name']} | "
                     f"{record['stats']['median'] * 1e3:.3g} |")
    return lines + [""]


def render(data: dict, plots: list[Path] = ()) -> str:
    lines = ["# mshare benchmark results", ""] + provenance_warning(data) + [
             "Every figure below was measured for mshare and for each peer in the same run.", ""]
    headline = summary(data)
    if headline:
        lines += ["## Summary", "", "Ratios against each peer are in the sections below.", ""]
        lines += headline + [""]
    lines += machine_section(data) + [""] + skipped_section(data.get("mshare_bench_skipped", []))
    for figure in FIGURES:
        records = records_of(data, figure.group)
        if not records:
            continue
        lines += [f"## {figure.title}", "", figure.explanation, ""]
        lines += figure_tables(figure, records) + [""]
    lines += ray_section(data) + scale_section(data) + lock_section(data) + other_groups(data)
    if plots:
        lines += ["## 6. Scale curves", ""]
        lines += [f"![{Path(plot).stem}]({Path(plot).name})" for plot in plots] + [""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    path = Path(argv[0])
    plots = sorted(path.parent.glob("*.png"))
    (path.parent / "results.md").write_text(render(load(path), plots))


if __name__ == "__main__":
    main(sys.argv[1:])
