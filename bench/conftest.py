"""Benchmark fixtures: a private registry, and a table of ratios printed at the end."""

import os
import shutil
import uuid

import pytest

RESULTS = {}  # (group, contender) -> seconds per operation


@pytest.fixture
def registry_path(monkeypatch):
    os.makedirs("/tmp/mshare-bench", exist_ok=True)
    path = os.path.join("/tmp/mshare-bench", uuid.uuid4().hex)
    monkeypatch.setenv("MSHARE_ROOT", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("mshare against its peers (time per operation, lower is better)")
    for group in dict.fromkeys(group for group, _ in RESULTS):
        rows = {who: seconds for (g, who), seconds in RESULTS.items() if g == group}
        ours = rows.get("mshare")
        write(f"{group}:")
        for who, seconds in rows.items():
            ratio = f"  speed-up of mshare: {seconds / ours:5.2f}x" if ours and who != "mshare" else ""
            write(f"    {who:26} {seconds * 1e9:10.1f} ns/op  {1 / seconds:14,.0f} ops/s{ratio}")
