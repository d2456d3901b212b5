"""The address arena: where regions live in every process's address space.

Regions start on ``ALIGNMENT`` (1 GiB) boundaries, the unit in which Linux shares
hugetlb page tables, inside an arena far from the heap (low), the mmap area and the
stacks (high). The arena is derived from the user address-space size, read off the
top of the stack: 47 bits on x86-64 gives 16 TiB .. 80 TiB, 39 bits on aarch64
64 GiB .. 320 GiB.
"""

from functools import lru_cache
from typing import List, Tuple

from mshare.procmaps import mapped_ranges, stack_top

ALIGNMENT = 1 << 30


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


@lru_cache(maxsize=None)
def address_bits() -> int:
    """Bits of user virtual address space in this process (47 on x86-64)."""
    return (stack_top() - 1).bit_length()


@lru_cache(maxsize=None)
def arena() -> Tuple[int, int]:
    """``(start, end)`` of the range regions are allocated in."""
    bits = address_bits()
    start = 1 << (bits - 3)
    return start, start + (1 << (bits - 1))


def check_requested(addr: object, length: int) -> None:
    """``ValueError`` unless ``addr`` is an aligned start whose range fits in the arena."""
    if isinstance(addr, bool) or not isinstance(addr, int):
        raise TypeError(f"addr must be int, not {type(addr).__name__}")
    start, end = arena()
    if addr % ALIGNMENT:
        raise ValueError(f"addr {addr:#x} is not aligned to {ALIGNMENT:#x} (1 GiB)")
    if not (start <= addr and addr + length <= end):
        raise ValueError(
            f"addr range {addr:#x}-{addr + length:#x} is outside the arena {start:#x}-{end:#x}"
        )


def own_mappings() -> List[Tuple[int, int]]:
    """This process's mappings as ``(start, end)`` pairs (they block allocation too)."""
    return [(r.start, r.end) for r in mapped_ranges()]
