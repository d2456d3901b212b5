"""``mshare mount`` / ``mshare umount`` (root) and ``mshare doctor`` (anyone), run as a user
would: separate processes, their output and exit codes."""

import json
import os
import pwd
import subprocess
import sys
import uuid

import pytest

import mshare
from mshare import machine, mounts, registry_root
from mshare.machine import Mount

from hugepage_fixtures import BASE, require_root
from helpers import run_python

MiB = 1 << 20


def mshare_command(*args):
    return subprocess.run([sys.executable, "-m", "mshare", *args], capture_output=True, text=True,
                          timeout=120, cwd="/")


@pytest.fixture
def places(monkeypatch):
    """Private paths for mshare mount's state and mounts; whatever a failed test leaves
    mounted is taken down afterwards."""
    require_root()
    base = os.path.join(BASE, f"places-{uuid.uuid4().hex[:12]}")
    paths = {"MSHARE_RUN_DIR": os.path.join(base, "run"),
             "MSHARE_HUGETLBFS": os.path.join(base, "hugepages"),
             "MSHARE_THP_ROOT": os.path.join(base, "thp")}
    for variable, path in paths.items():
        monkeypatch.setenv(variable, path)
    pool_before = machine.pool(2 * MiB).total
    yield paths
    for path in (paths["MSHARE_HUGETLBFS"], paths["MSHARE_THP_ROOT"]):
        if machine.mount_at(path) is not None:
            subprocess.run(["umount", "--lazy", path], check=True)
    state = os.path.join(paths["MSHARE_RUN_DIR"], mounts.STATE_FILE)
    if os.path.exists(state):
        with open(state) as file:
            added = json.load(file)["pool_pages"].get(str(2 * MiB), 0)
        with open(os.path.join(machine.pool_directory(2 * MiB), "nr_hugepages"), "w") as pool:
            pool.write(str(max(pool_before, machine.pool(2 * MiB).total - added)))
    subprocess.run(["rm", "-rf", base], check=True)


def test_mount_sets_up_both_backends_idempotently_and_umount_undoes_it(places, registry_path, name):
    hugepages, thp_root = places["MSHARE_HUGETLBFS"], places["MSHARE_THP_ROOT"]
    first = mshare_command("mount")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        f"mount -t hugetlbfs -o mode=1777,pagesize=2M none {hugepages}",
        f"mount -t tmpfs -o mode=1777,huge=within_size none {thp_root}",
    ]
    assert machine.mount_at(hugepages).fstype == "hugetlbfs"
    assert machine.mount_at(thp_root).huge_policy == "within_size"
    assert os.stat(hugepages).st_mode & 0o7777 == os.stat(thp_root).st_mode & 0o7777 == 0o1777

    again = mshare_command("mount")
    assert again.returncode == 0 and again.stdout.count("already mounted, left as it is") == 2
    with open(os.path.join(places["MSHARE_RUN_DIR"], mounts.STATE_FILE)) as file:
        recorded = json.load(file)
    assert [record["path"] for record in recorded["mounts"]] == [hugepages, thp_root]

    mshare.create(name, 4 * MiB, hugepages="thp").close()
    refused = mshare_command("umount")
    assert refused.returncode == 1 and "regions still live in" in refused.stderr
    assert "nothing was changed" in refused.stderr and machine.mount_at(thp_root) is not None
    mshare.unlink(name)

    undone = mshare_command("umount")
    assert undone.returncode == 0, undone.stderr
    assert undone.stdout.splitlines() == [f"umount {thp_root}", f"umount {hugepages}"]
    assert machine.mount_at(hugepages) is None and machine.mount_at(thp_root) is None
    assert not os.path.exists(hugepages) and not os.path.exists(thp_root)
    assert not os.path.exists(os.path.join(places["MSHARE_RUN_DIR"], mounts.STATE_FILE))
    assert mshare_command("umount").stdout.strip() == "nothing to undo: mshare mount set nothing up in this boot"


def test_mount_grows_the_pool_and_umount_gives_back_what_it_added(places):
    before = machine.pool(2 * MiB)
    wanted = before.free - before.reserved + 4
    grown = mshare_command("mount", "--hugepages", f"{wanted * 2}M")
    assert grown.returncode == 0, grown.stderr
    assert f"# 2M pool: {before.total} -> {before.total + 4} pages" in grown.stdout
    assert machine.pool(2 * MiB).free - machine.pool(2 * MiB).reserved >= wanted
    enough = mshare_command("mount", "--hugepages", f"{wanted * 2}M")
    assert f"at least {wanted} wanted: left as it is" in enough.stdout
    undone = mshare_command("umount")
    assert undone.returncode == 0, undone.stderr
    assert "(the 4 mshare mount added)" in undone.stdout
    assert machine.pool(2 * MiB).total == before.total


def test_a_record_from_an_earlier_boot_is_ignored(places):
    os.makedirs(places["MSHARE_RUN_DIR"])
    with open(os.path.join(places["MSHARE_RUN_DIR"], mounts.STATE_FILE), "w") as file:
        json.dump({"boot_id": "another boot", "mounts": [{"path": "/somewhere", "fstype": "tmpfs",
                                                          "made_directory": True}],
                   "pool_pages": {str(2 * MiB): 100}}, file)
    before = machine.pool(2 * MiB).total
    result = mshare_command("umount")
    assert result.stdout.strip() == "nothing to undo: mshare mount set nothing up in this boot"
    assert machine.pool(2 * MiB).total == before


def test_mount_and_umount_need_root(user_site):
    for command in ("mount", "umount"):
        result = run_python(f"""
            import sys
            from mshare.cli import main
            sys.exit(main([{command!r}]))
        """, user="nobody", check=False)
        assert result.returncode == 1
        assert f"mshare {command}: only root may mount file systems" in result.stderr
        # Run from python -c, there is no program path to suggest.
        assert result.stderr.endswith(f"; run: sudo mshare {command}\n")


def _described(monkeypatch, table):
    """Replace the mount table with ``table``: path -> (fstype, page size, world-writable)."""
    monkeypatch.delenv("MSHARE_HUGETLBFS", raising=False)
    monkeypatch.setenv("MSHARE_RUN_DIR", "/run/mshare")
    monkeypatch.setattr(machine, "_snapshot", lambda: machine._Snapshot.of([
        Mount(path, fstype, index, {}) for index, (path, (fstype, _, _)) in enumerate(table.items())]))
    monkeypatch.setattr(machine, "hugetlbfs_page_size", lambda path: table[path][1])
    monkeypatch.setattr(machine, "world_writable", lambda path: table[path][2])
    monkeypatch.setattr(machine, "default_huge_page_size", lambda: 2 * MiB)


def test_where_mount_puts_hugetlbfs(monkeypatch):
    _described(monkeypatch, {})
    assert mounts.hugetlbfs_target(2 * MiB) == ("/dev/hugepages", False)
    assert mounts.hugetlbfs_target(1 << 30) == ("/run/mshare/hugepages-1G", False)
    # systemd's /dev/hugepages that only root may write is left alone.
    _described(monkeypatch, {"/dev/hugepages": ("hugetlbfs", 2 * MiB, False)})
    assert mounts.hugetlbfs_target(2 * MiB) == ("/run/mshare/hugepages-2M", False)
    _described(monkeypatch, {"/mnt/huge": ("hugetlbfs", 2 * MiB, True)})
    assert mounts.hugetlbfs_target(2 * MiB) == ("/mnt/huge", True)


def test_doctor_tells_what_auto_would_choose_and_how_to_enable_the_rest(registry_path, hugetlbfs,
                                                                        monkeypatch, tmp_path):
    monkeypatch.setenv("MSHARE_THP_ROOT", str(tmp_path))
    result = mshare_command("doctor", "--size", "64M")
    assert result.returncode == 0, result.stderr
    shown = result.stdout
    for heading in ("hugetlb pools", "hugetlbfs mounts:", "transparent huge pages",
                    "/dev/shm (the shm backend)", "address space:", "MAP_FIXED_NOREPLACE yes",
                    "page tables:", "VmPTE"):
        assert heading in shown
    assert f"{hugetlbfs}: 2M pages, mode 1777" in shown
    assert f"hugetlb: yes - 2M pages in {hugetlbfs}" in shown
    assert "=> hugetlb (2M pages)" in shown
    assert f"thp: no - MSHARE_THP_ROOT={tmp_path} is not a tmpfs mount point" in shown
    # Named by the interpreter it ran under: sudo would not find this mshare on its PATH.
    assert ("to enable what is missing (as root):\n"
            f"  sudo {sys.executable} -m mshare mount (it mounts a huge-page tmpfs there)") in shown


def test_doctor_runs_for_anyone(user_site):
    # It names the registry a user would get, and makes none: a diagnostic leaves nothing
    # in /dev/shm (a user's private registry appears with that user's first region).
    private = registry_root.private_root(pwd.getpwnam("nobody").pw_uid)
    existed = os.path.lexists(private)
    result = run_python("""
        import sys
        from mshare.cli import main
        sys.exit(main(["doctor"]))
    """, user="nobody")
    assert "=> " in result.stdout and "you may write" in result.stdout
    assert f"registry {private}" in result.stdout or "MSHARE_ROOT=/" in result.stdout
    assert os.path.lexists(private) == existed
