"""The mshare command, run as a user would: a separate process, its output and exit code.

Exit codes: 0 success, 1 an operation failed, 2 a usage error (found before anything runs).
"""

import json
import os
import subprocess
import sys

import pytest

import mshare
from helpers import run_python
from people import as_stranger


def mshare_command(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mshare", *args], capture_output=True, text=True,
                          timeout=120, cwd="/", env=env)


@pytest.fixture
def make_region(registry_path):
    """``mshare.create`` whose regions are closed and unlinked when the test ends."""
    made = []

    def make(name, size, **options):
        made.append(mshare.create(name, size, hugepages="off", **options))
        return made[-1]

    yield make
    for region in made:
        region.close()
        try:
            mshare.unlink(region.name)
        except FileNotFoundError:
            pass  # the test removed it


def test_create_ls_info_rm(registry_path, name):
    created = mshare_command("create", name, "64M", "--mode", "0640", "--hugepages", "off")
    assert created.returncode == 0, created.stderr
    region = mshare.info(name)
    assert (region.size, region.mode) == (64 << 20, 0o640)
    assert f"{region.addr:#x}" in created.stdout

    header, line = mshare_command("ls").stdout.splitlines()
    assert header.split() == ["SIZE", "BACKEND", "ATTACHED", "NAME"]
    assert line.split() == ["64M", "shm", "0", name]

    shown = mshare_command("info", name).stdout
    assert f"address:     {region.addr:#x}" in shown and "size:        67108864 (64M)" in shown

    removed = mshare_command("rm", name)
    assert removed.returncode == 0 and mshare.list() == []


def test_bare_command_prints_help_and_version_is_the_package_version():
    bare = mshare_command()
    assert bare.returncode == 0 and bare.stderr == ""
    assert bare.stdout.startswith("usage: mshare") and "completion" in bare.stdout
    version = mshare_command("--version")
    assert (version.returncode, version.stdout) == (0, f"mshare {mshare.__version__}\n")


def test_ls_long_json_and_patterns(make_region, name):
    make_region(f"{name}-a", 4096)
    second = make_region(f"{name}-b", 8192, mode=0o644)
    header, *rows = mshare_command("ls", "-l").stdout.splitlines()
    assert header.split() == ["MODE", "OWNER", "GROUP", "SIZE", "ADDRESS", "PAGE", "BACKEND",
                              "ATTACHED", "CREATED", "NAME"]
    assert [row.split()[-1] for row in rows] == [f"{name}-a", f"{name}-b"]
    assert rows[1].split()[:5] == ["-rw-r--r--", "root", "root", "8K", f"{second.addr:#x}"]
    # This process maps it; the ls process only reads the registry.
    assert rows[1].split()[7] == "1"

    listed = json.loads(mshare_command("ls", "--json", "*-b").stdout)
    assert [entry["name"] for entry in listed] == [f"{name}-b"]
    assert listed[0]["addr"] == second.addr and listed[0]["size"] == 8192
    assert (listed[0]["mode"], listed[0]["mode_octal"], listed[0]["status"]) == (0o644, "0644", "ok")

    none = mshare_command("ls", "no-such-*")
    assert (none.returncode, none.stdout.splitlines()[1:]) == (0, [])


def test_unreadable_entries_listed_with_what_stat_tells(make_region, name, user_site):
    make_region(name, 4096, mode=0o600)
    seen = run_python("""
        import sys
        from mshare.cli import main
        sys.exit(main(["ls", "--json"]))
    """, **as_stranger())
    (listed,) = json.loads(seen.stdout)
    assert listed == {"name": name, "mode": 0o600, "uid": 0, "gid": 0, "status": "no access",
                      "mode_octal": "0600", "owner": "root", "group": "root"}


def test_info_json_shows_named_objects_and_their_kinds(make_region, registry_path, name):
    region = make_region(name, 1 << 20)
    region.array("samples", (4,), "f8")
    region.event("ready")
    shown = json.loads(mshare_command("info", name, "--json").stdout)
    text = mshare_command("info", name).stdout
    assert shown["objects"] == {"ready": "event", "samples": "array"}
    assert (shown["addr"], shown["size"], shown["registry"]) == (region.addr, 1 << 20, registry_path)
    assert "objects:     ready (event), samples (array)" in text


def test_rm_removes_every_name_it_can_and_force_ignores_missing(make_region, registry_path, name):
    for suffix in ("a", "b"):
        make_region(f"{name}-{suffix}", 4096)
    partly = mshare_command("rm", f"{name}-a", f"{name}-missing", f"{name}-b")
    assert partly.returncode == 1 and mshare.list() == []
    assert partly.stderr == f"mshare rm: no region named '{name}-missing' in {registry_path}\n"

    forced = mshare_command("rm", "-f", f"{name}-missing")
    assert (forced.returncode, forced.stderr) == (0, "")


@pytest.mark.parametrize("arguments", [
    ["no-such-command"], ["--bogus"],
    ["ls", "--bogus"], ["ls", "-l", "--json"],
    ["info"], ["info", ".hidden"],
    ["create", "n"], ["create", "n", "0"], ["create", "n", "12Q"], ["create", ".hidden", "1K"],
    ["create", "n", "1K", "--mode", "9"], ["create", "n", "1K", "--mode", "1777"],
    ["create", "n", "1K", "--hugepages", "maybe"],
    ["rm"], ["rm", "ok", "bad/name"],
    ["gc", "--bogus"], ["doctor", "--size", "12Q"],
    ["mount", "--hugepages", "lots"], ["umount", "extra"],
    ["demo", "--workers", "0"], ["completion"], ["completion", "cmd.exe"],
])
def test_usage_errors_exit_2_and_change_nothing(registry_path, arguments):
    result = mshare_command(*arguments)
    assert result.returncode == 2, (arguments, result)
    assert result.stdout == "" and "usage: mshare" in result.stderr
    assert mshare.list() == []


def test_operational_errors_exit_1_with_one_line(registry_path, name):
    missing = mshare_command("info", name)
    assert missing.returncode == 1
    assert missing.stderr == f"mshare info: no region named {name!r} in {registry_path}\n"
    mshare_command("create", name, "1K", "--hugepages", "off")
    duplicate = mshare_command("create", name, "1K")
    assert duplicate.returncode == 1 and duplicate.stderr.count("\n") == 1
    assert "already exists" in duplicate.stderr
    unmappable = mshare_command("create", f"{name}-2", "1K", "--hugepages", "hugetlb",
                                env=dict(os.environ, MSHARE_HUGETLBFS="/nonexistent"))
    assert unmappable.returncode == 1 and unmappable.stderr.startswith("mshare create: ")
    mshare.unlink(name)
    gone = mshare_command("rm", name)
    assert gone.returncode == 1


@pytest.mark.parametrize("program, suggested", [
    ("/opt/tools/venv/bin/mshare", "sudo /opt/tools/venv/bin/mshare"),
    ("/usr/lib/python3/site-packages/mshare/__main__.py", "sudo {python} -m mshare"),
])
@pytest.mark.parametrize("command", ["mount", "umount"])
def test_root_only_commands_suggest_sudo_with_the_full_path(user_site, program, suggested, command):
    refused = run_python(f"""
        import sys
        from mshare.cli import main
        sys.argv = [{program!r}, {command!r}]
        sys.exit(main())
    """, check=False, **as_stranger())
    suggested = suggested.format(python=run_python("import sys; print(sys.executable)",
                                                   **as_stranger()).stdout.strip())
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (f"mshare {command}: only root may mount file systems and size the "
                              f"kernel's huge page pool; run: {suggested} {command}\n")


def test_relative_program_resolved_through_path(tmp_path):
    program = tmp_path / "mshare"
    program.write_text("")
    program.chmod(0o755)
    found = run_python(f"""
        import os, sys
        os.environ["PATH"] = {str(tmp_path)!r}
        sys.argv = ["mshare"]
        from mshare.cli.text import this_command
        print(this_command())
    """)
    assert found.stdout == f"{program}\n"


def test_doctor_advice_names_the_command_by_its_path(registry_path):
    python_path_mshare = os.path.join(os.path.dirname(sys.executable), "mshare")
    advice = subprocess.run([python_path_mshare, "doctor", "--size", "4M"], capture_output=True,
                            text=True, timeout=120, cwd="/",
                            env=dict(os.environ, MSHARE_HUGETLBFS="/nonexistent"))
    assert advice.returncode == 0, advice.stderr
    fixes = advice.stdout.split("to enable what is missing (as root):\n")[1].splitlines()
    assert f"  sudo {python_path_mshare} mount (it mounts one there), or unset MSHARE_HUGETLBFS" in fixes


def test_shell_completion_offers_region_names(make_region, name, tmp_path):
    script = mshare_command("completion", "bash")
    assert script.returncode == 0 and "complete " in script.stdout and "mshare" in script.stdout
    make_region(f"{name}-x", 4096)
    make_region(f"other-{name}", 4096)
    line = f"mshare rm {name[:9]}"
    answers = tmp_path / "answers"
    completed = subprocess.run(
        [sys.executable, "-m", "mshare"], capture_output=True, text=True, timeout=120, cwd="/",
        env=dict(os.environ, _ARGCOMPLETE="1", COMP_LINE=line, COMP_POINT=str(len(line)),
                 _ARGCOMPLETE_IFS="\n", _ARGCOMPLETE_STDOUT_FILENAME=str(answers)))
    assert completed.returncode == 0, completed.stderr
    assert answers.read_text().split() == [f"{name}-x"]


def test_sizes_in_human_units():
    from mshare.units import format_size, parse_size

    assert [parse_size(t) for t in ("4096", "64M", "2G", "1.5GiB", "3k")] == [
        4096, 64 << 20, 2 << 30, 3 << 29, 3072]
    assert [format_size(s) for s in (512, 4096, 3 << 29, 64 << 20)] == ["512", "4K", "1.5G", "64M"]
