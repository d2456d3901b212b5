"""``mshare doctor``: what this machine offers for shared memory, which backend
``hugepages="auto"`` would choose, and the commands that enable what is missing.

Anyone may run it; it only reads ``/proc`` and ``/sys`` and tries two mapping features on
a page of anonymous memory.
"""

import os
import platform
import pwd
from typing import List

from mshare import addresses, machine, pagetables
from mshare._core import kernel_features
from mshare.backends import hugetlb, thp
from mshare.backends.files import Unavailable
from mshare.backends.selection import candidates
from mshare.backends.shm import SHM_DIRECTORY
from mshare.operations import bookkeeping_length
from mshare.registry import registry_root
from mshare.units import format_size


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _directory(path: str) -> str:
    info = os.stat(path)
    return (f"mode {info.st_mode & 0o7777:04o}, owner {_owner(info.st_uid)}, "
            f"you may write: {_yes(machine.writable(path))}")


def _space(path: str) -> str:
    info = os.statvfs(path)
    return (f"size {format_size(info.f_blocks * info.f_frsize)}, "
            f"{format_size(info.f_bavail * info.f_frsize)} free")


def pools_section() -> List[str]:
    lines = ["hugetlb pools (/sys/kernel/mm/hugepages):"]
    pools = machine.pools()
    if not pools:
        return lines + ["  this kernel has no hugetlb pages"]
    default = machine.default_huge_page_size()
    for pool in pools.values():
        lines.append(
            f"  {format_size(pool.page_size)} pages{' (default)' if pool.page_size == default else ''}: "
            f"{pool.total} in the pool, {pool.free} free, {pool.reserved} reserved, "
            f"{pool.surplus} surplus, overcommit {pool.overcommit} "
            f"-> {format_size(pool.available * pool.page_size)} available"
        )
    return lines


def hugetlbfs_section() -> List[str]:
    lines = ["hugetlbfs mounts:"]
    found = machine.visible_mounts(machine.HUGETLBFS)
    for mount in found:
        try:
            room = machine.hugetlbfs_room(mount.mount_point)
            limit = "no size limit" if room is None else f"size limit admits {room} more pages"
            lines.append(f"  {mount.mount_point}: "
                         f"{format_size(machine.hugetlbfs_page_size(mount.mount_point))} pages, "
                         f"{_directory(mount.mount_point)}, {limit}")
        except OSError as error:
            lines.append(f"  {mount.mount_point}: {error.strerror}")
    return lines + ([] if found else ["  none"])


def thp_section() -> List[str]:
    shmem_enabled = machine.thp_setting("shmem_enabled")
    if shmem_enabled is None:
        return ["transparent huge pages: not in this kernel"]
    lines = [
        "transparent huge pages (/sys/kernel/mm/transparent_hugepage):",
        f"  enabled (private memory): {machine.thp_setting('enabled')}; shmem_enabled (memfd, "
        f"shared anonymous memory; 'deny'/'force' override tmpfs mounts): {shmem_enabled}; "
        f"huge page {format_size(machine.pmd_page_size())}",
        "  tmpfs mounts (files there get huge pages when mounted huge=within_size, always or advise):",
    ]
    for mount in machine.visible_mounts(machine.TMPFS):
        try:
            lines.append(f"    {mount.mount_point}: huge={mount.huge_policy}, "
                         f"{_space(mount.mount_point)}, {_directory(mount.mount_point)}")
        except OSError as error:
            lines.append(f"    {mount.mount_point}: huge={mount.huge_policy} ({error.strerror})")
    return lines


def system_section() -> List[str]:
    features = kernel_features()
    start, end = addresses.arena()
    stats = pagetables.pagetable_stats()
    return [
        f"/dev/shm (the shm backend): {_space(SHM_DIRECTORY)}",
        f"address space: {addresses.address_bits()}-bit user space; regions live in "
        f"{start:#x}-{end:#x} ({format_size(end - start)})",
        f"kernel {platform.release()}: MAP_FIXED_NOREPLACE {_yes(features['MAP_FIXED_NOREPLACE'])} "
        f"(Linux 4.17+), MADV_POPULATE_READ/WRITE {_yes(features['MADV_POPULATE'])} (Linux 5.14+)",
        f"page tables: {format_size(stats.system)} system-wide (PageTables, counts a shared PMD "
        f"table once); {format_size(stats.process)} in this process (VmPTE, counts a shared "
        "table in every process that uses it)",
        "environment: " + ", ".join(
            f"{variable}={os.environ.get(variable) or '(unset)'}"
            for variable in ("MSHARE_ROOT", hugetlb.ENVIRONMENT, thp.ENVIRONMENT)
        ) + f"; registry {registry_root(make=False)}",
    ]


def choice_section(size: int, command: str) -> List[str]:
    lines = [f'for a {format_size(size)} region, hugepages="auto" would choose:']
    fixes = []
    chosen = None
    for kind, choice in candidates(size, bookkeeping_length):
        if isinstance(choice, Unavailable):
            lines.append(f"  {kind}: no - {choice.reason}")
            if choice.fix:
                fixes.append(choice.fix)
        else:
            lines.append(f"  {kind}: yes - {format_size(choice.page_size())} pages in {choice.directory}")
            chosen = chosen or f"{kind} ({format_size(choice.page_size())} pages)"
    lines.append(f"  shm: yes - 4K pages in {SHM_DIRECTORY}")
    lines.append(f"  => {chosen or 'shm (4K pages)'}")
    if fixes:
        # The backends word their fixes as "mshare mount ..."; sudo resets PATH, so the
        # command is named by the path it was run by.
        lines += ["", "to enable what is missing (as root):"] + [
            f"  sudo {command}{fix[len('mshare'):]}" if fix.startswith("mshare ") else f"  {fix}"
            for fix in dict.fromkeys(fixes)]
    return lines


def report(size: int, command: str = "mshare") -> List[str]:
    """The doctor's findings as lines of text; ``command`` is how its advice names the
    ``mshare`` command (the command line passes the full path it was run by)."""
    lines = ["mshare doctor: what this machine offers for shared memory", ""]
    for section in (pools_section(), hugetlbfs_section(), thp_section(), system_section()):
        lines += section + [""]
    return lines + choice_section(size, command) + ray_section()


def ray_section() -> List[str]:
    """Sizing advice for Ray's object store, which shares /dev/shm (only when Ray is installed)."""
    from mshare.ray.sizing import doctor_notes

    notes = doctor_notes()
    return ["", "Ray is installed:"] + [f"  {note}" for note in notes] if notes else []

