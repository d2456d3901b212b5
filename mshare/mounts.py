"""``mshare mount`` and ``mshare umount`` (root): the counterpart of
``mount -t msharefs none /sys/fs/mshare``.

``mount`` sets up what the huge-page backends need, idempotently:

- a hugetlbfs everyone may write (mode 1777): an existing one of the page size is used as
  it is; otherwise one is mounted at ``/dev/hugepages`` when nothing is mounted there, or
  else at ``RUN_DIR/hugepages-2M`` (an existing hugetlbfs ordinary users cannot write, as
  systemd mounts it, is left alone);
- a tmpfs mounted ``huge=within_size`` for ``thp``, at ``RUN_DIR/thp`` unless one
  everyone may write exists;
- with ``--hugepages SIZE``, ``vm.nr_hugepages`` (of ``--page-size``) grown until at
  least SIZE of the pool is free.

``MSHARE_HUGETLBFS`` and ``MSHARE_THP_ROOT`` name the mount points to use instead, as
they do for the backends. ``RUN_DIR`` is ``$MSHARE_RUN_DIR`` or ``/run/mshare``.

What ``mount`` did is recorded in ``RUN_DIR/mounted.json`` (mounts it made, directories
it created, huge pages it added to each pool, and the boot it happened in, so a record
from before a reboot is ignored). ``umount`` undoes exactly that and nothing else,
and refuses, changing nothing, while regions still live in a mount it made.
"""

import errno
import json
import math
import os
import subprocess
from typing import Any, Callable, Dict, Optional, Tuple

from mshare import machine
from mshare.backends import hugetlb, thp
from mshare.units import format_size

RUN_DIR_ENVIRONMENT = "MSHARE_RUN_DIR"
DEFAULT_RUN_DIR = "/run/mshare"
DEFAULT_HUGETLBFS = "/dev/hugepages"
STATE_FILE = "mounted.json"


def run_dir() -> str:
    return os.path.abspath(os.environ.get(RUN_DIR_ENVIRONMENT) or DEFAULT_RUN_DIR)


def _boot_id():
    with open("/proc/sys/kernel/random/boot_id") as boot:
        return boot.read().strip()


def load_state() -> Dict[str, Any]:
    """What earlier ``mshare mount`` runs of this boot did (empty when nothing)."""
    empty = {"boot_id": _boot_id(), "mounts": [], "pool_pages": {}}
    try:
        with open(os.path.join(run_dir(), STATE_FILE)) as file:
            state = json.load(file)
    except FileNotFoundError:
        return empty
    except (ValueError, OSError) as error:
        raise ValueError(f"{os.path.join(run_dir(), STATE_FILE)} is unreadable ({error}); "
                         "remove it and undo the mounts by hand (see mshare doctor)") from None
    if state.get("boot_id") != empty["boot_id"]:
        return empty
    return state


def save_state(state: Dict[str, Any]) -> None:
    path = os.path.join(run_dir(), STATE_FILE)
    if not state["mounts"] and not any(state["pool_pages"].values()):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    os.makedirs(run_dir(), mode=0o755, exist_ok=True)
    temporary = f"{path}.{os.getpid()}"
    with open(temporary, "w") as file:
        json.dump(state, file, indent=1)
    os.replace(temporary, path)


# -- deciding where ---------------------------------------------------------------------


def hugetlbfs_target(page_size: int) -> Tuple[str, bool]:
    """``(path, mounted)``: where hugetlbfs of ``page_size`` should be, and whether a
    suitable one is already mounted there."""
    override = os.environ.get(hugetlb.ENVIRONMENT)
    if override:
        path = os.path.normpath(os.path.abspath(override))
        mount = machine.mount_at(path)
        return path, mount is not None and _is_hugetlbfs_of(mount, page_size)
    for mount in machine.visible_mounts(machine.HUGETLBFS):
        if _is_hugetlbfs_of(mount, page_size) and machine.world_writable(mount.mount_point):
            return mount.mount_point, True
    if page_size == machine.default_huge_page_size() and machine.mount_at(DEFAULT_HUGETLBFS) is None:
        return DEFAULT_HUGETLBFS, False
    return os.path.join(run_dir(), f"hugepages-{format_size(page_size)}"), False


def _is_hugetlbfs_of(mount, page_size):
    return (mount.fstype == machine.HUGETLBFS
            and machine.hugetlbfs_page_size(mount.mount_point) == page_size)


def thp_target() -> Tuple[str, bool]:
    """``(path, mounted)`` for the huge-page tmpfs, as ``hugetlbfs_target`` does."""
    shmem_enabled = machine.thp_setting("shmem_enabled")
    override = os.environ.get(thp.ENVIRONMENT)
    if override:
        path = os.path.normpath(os.path.abspath(override))
        mount = machine.mount_at(path)
        return path, mount is not None and thp.huge_mount(mount, shmem_enabled)
    for mount in machine.visible_mounts(machine.TMPFS):
        if (mount.huge_policy in machine.HUGE_TMPFS_POLICIES
                and machine.world_writable(mount.mount_point)):
            return mount.mount_point, True
    return os.path.join(run_dir(), "thp"), False


# -- doing it ---------------------------------------------------------------------------


def mount(hugepages: Optional[int] = None, page_size: Optional[int] = None,
          report: Callable[[str], object] = print) -> int:
    """Set up hugetlbfs, a huge-page tmpfs and (with ``hugepages`` bytes) the pool.

    Returns the exit status: 1 when the kernel could not grow the pool far enough."""
    _require_root()
    page_size = page_size or machine.default_huge_page_size()
    if page_size is None or page_size not in machine.pools():
        sizes = ", ".join(format_size(size) for size in machine.pools()) or "none"
        raise ValueError(f"this kernel has no {format_size(page_size or 0)} huge pages "
                         f"(it offers: {sizes})")
    state = load_state()
    try:
        path, mounted = hugetlbfs_target(page_size)
        if mounted:
            report(f"hugetlbfs ({format_size(page_size)} pages) at {path}: already mounted, left as it is")
        else:
            _mount(state, "hugetlbfs", f"mode=1777,pagesize={format_size(page_size)}", path, report)
        shmem_enabled = machine.thp_setting("shmem_enabled")
        if shmem_enabled in (None, "deny"):
            report("transparent huge pages for shared memory are unavailable "
                   f"(shmem_enabled: {shmem_enabled or 'missing'}): no huge-page tmpfs mounted")
        else:
            path, mounted = thp_target()
            if mounted:
                report(f"huge-page tmpfs at {path}: already mounted, left as it is")
            else:
                _mount(state, "tmpfs", "mode=1777,huge=within_size", path, report)
        if hugepages is not None:
            return _grow_pool(state, page_size, hugepages, report)
        return 0
    finally:
        save_state(state)


def _mount(state, fstype, options, path, report):
    made_directory = not os.path.isdir(path)
    os.makedirs(path, mode=0o755, exist_ok=True)
    command = ["mount", "-t", fstype, "-o", options, "none", path]
    _run(command)
    state["mounts"].append({"path": path, "fstype": fstype, "made_directory": made_directory})
    report(" ".join(command))


def _grow_pool(state, page_size, wanted_bytes, report):
    wanted = math.ceil(wanted_bytes / page_size)
    pool = machine.pool(page_size)
    free = max(0, pool.free - pool.reserved)
    name = f"{format_size(page_size)} pool"
    if free >= wanted:
        report(f"{name}: {free} pages free, at least {wanted} wanted: left as it is")
        return 0
    _write_pool_size(page_size, pool.total + wanted - free)
    grown = machine.pool(page_size).total - pool.total
    added = state["pool_pages"]
    added[str(page_size)] = added.get(str(page_size), 0) + max(grown, 0)
    report(f"echo {pool.total + wanted - free} > {machine.pool_directory(page_size)}/nr_hugepages"
           f"   # {name}: {pool.total} -> {pool.total + grown} pages")
    if grown < wanted - free:
        report(f"the kernel found only {grown} of {wanted - free} more {format_size(page_size)} "
               "pages (memory is short or fragmented; 1G pages are best reserved at boot "
               "with hugepagesz=1G hugepages=N)")
        return 1
    return 0


def umount(report: Callable[[str], object] = print) -> int:
    """Undo exactly what ``mount`` recorded; refuse while regions live in its mounts."""
    _require_root()
    state = load_state()
    if not state["mounts"] and not any(state["pool_pages"].values()):
        report("nothing to undo: mshare mount set nothing up in this boot")
        return 0
    live = []
    for record in state["mounts"]:
        if _still_mounted(record):
            contents = sorted(os.listdir(record["path"]))
            if contents:
                live.append(f"{record['path']} ({len(contents)} file(s): {', '.join(contents[:3])})")
    if live:
        raise OSError(errno.EBUSY, "regions still live in " + "; ".join(live)
                      + ": remove them first (mshare ls, mshare rm NAME); nothing was changed")
    for record in reversed(state["mounts"]):
        if _still_mounted(record):
            _run(["umount", record["path"]])
            report(f"umount {record['path']}")
        else:
            report(f"{record['path']} was already unmounted")
        if record["made_directory"]:
            try:
                os.rmdir(record["path"])
            except OSError:
                pass
    state["mounts"] = []
    for size_text, added in state["pool_pages"].items():
        page_size = int(size_text)
        total = machine.pool(page_size).total
        _write_pool_size(page_size, max(total - added, 0))
        report(f"{format_size(page_size)} pool: {total} -> {machine.pool(page_size).total} pages "
               f"(the {added} mshare mount added)")
    state["pool_pages"] = {}
    save_state(state)
    return 0


def _still_mounted(record):
    mount = machine.mount_at(record["path"])
    return mount is not None and mount.fstype == record["fstype"]


def _write_pool_size(page_size, pages):
    with open(os.path.join(machine.pool_directory(page_size), "nr_hugepages"), "w") as pool:
        pool.write(f"{pages}\n")


def _run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise OSError(f"{' '.join(command)} failed: {result.stderr.strip() or result.returncode}")


def _require_root():
    if os.geteuid() != 0:
        raise PermissionError(
            errno.EPERM, "only root may mount file systems and size the kernel's huge page pool")

