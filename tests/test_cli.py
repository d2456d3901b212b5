"""The mshare command, run as a user would: a separate process, its output and exit code."""

import subprocess
import sys

import mshare


def mshare_command(*args):
    return subprocess.run([sys.executable, "-m", "mshare", *args], capture_output=True, text=True,
                          timeout=120, cwd="/")


def test_create_ls_info_rm(registry_path, name):
    created = mshare_command("create", name, "64M", "--mode", "0640")
    assert created.returncode == 0, created.stderr
    region = mshare.info(name)
    assert (region.size, region.mode) == (64 << 20, 0o640)
    assert f"{region.addr:#x}" in created.stdout

    listing = mshare_command("ls")
    (line,) = [row for row in listing.stdout.splitlines() if row.endswith(name)]
    assert line.split()[:1] == ["-rw-r-----"] and "64M" in line and f"{region.addr:#018x}" in line

    shown = mshare_command("info", name).stdout
    assert f"address:     {region.addr:#x}" in shown and "size:        67108864 (64M)" in shown

    removed = mshare_command("rm", name)
    assert removed.returncode == 0 and mshare.list() == []


def test_errors_are_one_line_with_nonzero_exit(registry_path, name):
    missing = mshare_command("info", name)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"mshare info: no region named {name!r} in {registry_path}"
    bad_size = mshare_command("create", name, "12Q")
    assert bad_size.returncode == 2 and "not a size" in bad_size.stderr
    bad_name = mshare_command("create", ".hidden", "1K")
    assert bad_name.returncode == 1 and "must not start with '.'" in bad_name.stderr
    mshare_command("create", name, "1K")
    duplicate = mshare_command("create", name, "1K")
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    mshare_command("rm", name)


def test_sizes_in_human_units():
    from mshare.units import format_size, parse_size

    assert [parse_size(t) for t in ("4096", "64M", "2G", "1.5GiB", "3k")] == [
        4096, 64 << 20, 2 << 30, 3 << 29, 3072]
    assert [format_size(s) for s in (512, 4096, 3 << 29, 64 << 20)] == ["512", "4K", "1.5G", "64M"]
