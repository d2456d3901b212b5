"""The figure 10 section of results.md: page tables of 1 to 1,000 processes, and the seed scenario."""

from __future__ import annotations

from bench.machine import GiB, KiB, MiB, human
from bench.scale import PEER_MOST, SEED_BYTES, SEED_PROCESSES

SCALE_GROUP = "10 scale: processes mapping one region"


def _largest_per_backend(records: list[dict]) -> dict[str, dict]:
    largest: dict[str, dict] = {}
    for record in records:
        extra = record["extra_info"]
        if extra["processes"] > largest.get(extra["backend"], {}).get("processes", 0):
            largest[extra["backend"]] = extra
    return largest


def scale_section(data: dict) -> list[str]:
    records = [record for record in data["benchmarks"] if record["group"] == SCALE_GROUP]
    if not records:
        return []
    lines = ["## 10. The kernel proposal's scenario: processes mapping one region", "",
             "Processes forked after import attach one region and read every page, one after "
             "another, all staying mapped. Page tables: growth of the system-wide `PageTables`; "
             "`VmPTE` counts a shared table in every process that uses it.", "",
             "| backend | region | processes | page tables grown | per process | VmPTE per "
             "process | attach + read, median |", "|---|---|---|---|---|---|---|"]
    for record in sorted(records, key=lambda r: (r["extra_info"]["backend"],
                                                 r["extra_info"]["processes"])):
        extra = record["extra_info"]
        lines.append(
            f"| {extra['backend']} | {human(extra['size'])} | {extra['processes']:,} | "
            f"{extra['pagetables_growth_kib'] / KiB:,.1f} MiB | {extra['kib_per_process']:,.1f} KiB | "
            f"{extra['vmpte_kib_per_process']:,.1f} KiB | {extra['median_attach_read_s'] * 1e3:,.2f} ms |")
    lines += ["", f"### The seed scenario: {SEED_BYTES / 1e9:.0f} GB x {SEED_PROCESSES:,} processes",
              "", "From each backend's largest measured process count; the peer on 4 KiB pages "
              f"was measured up to {PEER_MOST} processes and is **extrapolated** to "
              f"{SEED_PROCESSES:,} (each process pays alone, so its cost is linear in processes).",
              "", "| backend | page tables | formula |", "|---|---|---|"]
    for backend, extra in sorted(_largest_per_backend(records).items()):
        seed_kib = extra["seed_scenario_kib"]
        amount = (f"{seed_kib * KiB / GiB:,.1f} GiB" if seed_kib * KiB >= GiB
                  else f"{seed_kib * KiB / MiB:,.1f} MiB")
        how = "extrapolated" if extra["page_size"] == 4 * KiB else "computed"
        lines.append(f"| {backend} | {amount} ({how} from {extra['processes']:,} processes) | "
                     f"{extra['seed_scenario_formula']} |")
    return lines + [""]
