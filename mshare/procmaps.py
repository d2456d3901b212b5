"""Reading this process's memory map (``/proc/self/maps``)."""

from typing import List, NamedTuple


class MappedRange(NamedTuple):
    """One mapping of this process: its address range and the line that describes it."""

    start: int
    end: int
    description: str


def mapped_ranges() -> List[MappedRange]:
    """Every mapping of this process, in address order."""
    ranges: List[MappedRange] = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(part, 16) for part in fields[0].split("-"))
            path = fields[5].strip() if len(fields) > 5 else ""
            ranges.append(MappedRange(start, end, f"{fields[0]} {fields[1]} {path or '[anonymous]'}"))
    return ranges


def overlapping(start: int, end: int) -> List[MappedRange]:
    """The mappings of this process that overlap ``[start, end)``."""
    return [r for r in mapped_ranges() if r.start < end and start < r.end]


def describe_occupant(start: int, end: int) -> str:
    """A human description of what occupies ``[start, end)``, for error messages."""
    occupants = overlapping(start, end)
    if not occupants:
        return "a mapping that has since gone"
    shown = "; ".join(r.description for r in occupants[:3])
    more = f" and {len(occupants) - 3} more" if len(occupants) > 3 else ""
    return f"the mapping {shown}{more}"


def stack_top() -> int:
    """The end of the main thread's stack: the top of the user address space, rounded down."""
    for r in mapped_ranges():
        if r.description.endswith("[stack]"):
            return r.end
    raise OSError("no [stack] mapping in /proc/self/maps")
