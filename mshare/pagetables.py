"""Page-table accounting: what page tables cost, and how the kernel really maps a region.

Two figures tell what page tables cost:

- ``PageTables`` in ``/proc/meminfo``: every page-table page on the machine, counted
  once. A PMD table shared by many processes (hugetlb, ``huge_pmd_share``) counts once
  here: it is the only figure that shows the saving.
- ``VmPTE`` in ``/proc/self/status``: the page tables of this process. It counts a shared
  PMD table in *every* process that uses it, so summing ``VmPTE`` over processes
  overstates what shared tables cost.

How a region is mapped comes from ``/proc/self/smaps``: ``KernelPageSize`` for hugetlb
mappings, and for transparent huge pages (whose ``KernelPageSize`` stays 4 KiB) the PMD
size whenever the kernel maps the region's pages with PMDs.
"""

from dataclasses import dataclass
from typing import Dict, Final, NamedTuple, Set, Union

from mshare import addresses, machine
from mshare._core import PAGE_SIZE

# Processes share the PMD table of a hugetlb mapping per whole 1 GiB-aligned range: the
# range one PMD table maps (512 entries of 2 MiB) on x86-64 and arm64 with 4 KiB pages,
# and the alignment of every region's start.
SHARING_UNIT: Final[int] = addresses.ALIGNMENT

# One mapping's smaps fields: sizes and counts as int, ``VmFlags`` as a set of flags.
SmapsFields = Dict[str, Union[int, Set[str]]]


class PageTableStats(NamedTuple):
    """Page-table memory in bytes: ``system`` from ``PageTables`` (every table once),
    ``process`` from this process's ``VmPTE`` (a shared PMD table counted in each sharer)."""

    system: int
    process: int


def pagetable_stats(settle: bool = False) -> PageTableStats:
    """System-wide and this process's page-table memory, in bytes.

    The kernel sums ``PageTables`` from per-CPU counters about once a second; with
    ``settle=True`` (root only, ignored otherwise) they are folded first, so the figure is
    exact at the moment of the call.

    >>> before = mshare.pagetable_stats(settle=True).system
    """
    if settle:
        machine.settle_counters()
    process = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmPTE:"):
                process = int(line.split()[1]) * 1024
                break
    return PageTableStats(machine.meminfo()["PageTables"] * 1024, process)


def mapping_smaps(addr: int) -> SmapsFields:
    """The ``/proc/self/smaps`` fields of the mapping that starts at ``addr``, sizes in
    bytes, ``THPeligible`` as 0/1 and ``VmFlags`` as a set of flags."""
    fields: SmapsFields | None = None
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(None, 1)[0]
            if not head.endswith(":"):
                if inside:
                    break
                start, _, end = head.partition("-")
                inside = int(start, 16) == addr
                if inside:
                    fields = {"Size": int(end, 16) - addr}
                continue
            if fields is None or not inside:
                continue
            key, value = head[:-1], line.split()[1:]
            if key == "VmFlags":
                fields[key] = set(value)
            elif value and value[-1] == "kB":
                fields[key] = int(value[0]) * 1024
            elif value and value[0].isdigit():
                fields[key] = int(value[0])
    if fields is None:
        raise ValueError(f"nothing is mapped at {addr:#x} in this process")
    return fields


def _number(fields: SmapsFields, key: str, default: int = 0) -> int:
    # Every field but ``VmFlags`` is a number.
    value = fields.get(key, default)
    return value if isinstance(value, int) else default


def page_size_of(fields: SmapsFields) -> int:
    """The page size the kernel maps a mapping with, from its smaps ``fields``.

    hugetlb mappings report their page size as ``KernelPageSize``. Transparent huge pages
    do not (it stays 4 KiB), so a mapping whose resident pages are PMD-mapped, or that
    the kernel declares eligible before any page is resident, reports the PMD size.
    """
    kernel = _number(fields, "KernelPageSize", PAGE_SIZE)
    if kernel > PAGE_SIZE:
        return kernel
    pmd_mapped = _number(fields, "ShmemPmdMapped") + _number(fields, "FilePmdMapped")
    if pmd_mapped or (_number(fields, "THPeligible") and not resident(fields)):
        return machine.pmd_page_size()
    return kernel


def resident(fields: SmapsFields) -> int:
    """Bytes of the mapping present in this process's page tables (smaps counts hugetlb
    pages apart from ``Rss``)."""
    return (_number(fields, "Rss") + _number(fields, "Shared_Hugetlb")
            + _number(fields, "Private_Hugetlb"))


def huge_resident(fields: SmapsFields) -> int:
    """Bytes of the mapping resident in huge pages (hugetlb or PMD-mapped)."""
    return (_number(fields, "Shared_Hugetlb") + _number(fields, "Private_Hugetlb")
            + _number(fields, "ShmemPmdMapped") + _number(fields, "FilePmdMapped"))


def shared_span(addr: int, length: int) -> int:
    """Bytes of ``[addr, addr + length)`` in whole ``SHARING_UNIT``-aligned ranges: the
    part of a 2 MiB-page hugetlb mapping whose page tables processes share."""
    first = -(-addr // SHARING_UNIT) * SHARING_UNIT
    last = (addr + length) // SHARING_UNIT * SHARING_UNIT
    return max(0, last - first)


@dataclass(frozen=True)
class RegionStats:
    """How this process maps a region (``Region.stats()``).

    ``page_size``: as the kernel maps it. ``mapped``: bytes mapped (the size rounded up to
    the page size, plus the region's bookkeeping). ``resident``: bytes of the mapping
    present in this process's page tables; ``huge_resident`` of them in huge pages.
    ``pagetable_sharing``: whether other processes mapping the region share its page
    tables (a 2 MiB-page hugetlb mapping covering at least one whole 1 GiB-aligned
    range); ``shared_span`` is how many bytes of it are covered by shared tables.
    """

    backend: str
    page_size: int
    mapped: int
    resident: int
    huge_resident: int
    pagetable_sharing: bool
    shared_span: int


def region_stats(backend: str, addr: int) -> RegionStats:
    """``RegionStats`` of the mapping at ``addr`` of a region in ``backend``."""
    fields = mapping_smaps(addr)
    span = 0
    # Only PMD entries that map huge pages of a shared hugetlb mapping share their table.
    pmd_mapped_hugetlb = fields.get("KernelPageSize") == machine.pmd_page_size()
    flags = fields.get("VmFlags", set())
    mapped = _number(fields, "Size")
    if pmd_mapped_hugetlb and isinstance(flags, set) and "sh" in flags:
        span = shared_span(addr, mapped)
    return RegionStats(
        backend=backend, page_size=page_size_of(fields), mapped=mapped, resident=resident(fields),
        huge_resident=huge_resident(fields), pagetable_sharing=span > 0, shared_span=span,
    )
