"""Sizes in human units: ``64M``, ``2G``, ``1.5GiB`` (binary multiples)."""

import argparse
import re
from typing import Final

_MULTIPLIERS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
# ASCII digits only; a unit letter, optionally followed by "B" or "iB"; or just "B".
_SIZE = re.compile(r"\s*([0-9]+)(?:\.([0-9]+))?\s*(?:([KMGTP])(?:I?B)?|B)?\s*\Z",
                   re.IGNORECASE | re.ASCII)
# Longer spellings are refused before any arithmetic, so no input is costly to reject.
_MAX_SIZE_TEXT = 64
# No address space holds more bytes.
MAX_SIZE: Final = (1 << 64) - 1


def parse_size(text: str) -> int:
    """Bytes in ``text`` (``"4096"``, ``"64M"``, ``"2G"``, ``"1.5GiB"``); ``ValueError``
    with a one-line message otherwise, also for a fraction that is not a whole number of
    bytes (``"1.3K"``) and for sizes of 2**64 bytes or more."""
    if len(text) > _MAX_SIZE_TEXT:
        raise ValueError(f"not a size: {text[:20]!r}... is {len(text)} characters long")
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 4096, 64M, 2G)")
    whole, fraction, unit = match.groups()
    fraction, unit = fraction or "", unit or ""
    # Exact integer arithmetic: size = (whole.fraction) * multiplier.
    scaled = int(whole + fraction) * _MULTIPLIERS[unit.upper()]
    size, remainder = divmod(scaled, 10 ** len(fraction))
    if remainder:
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    if size > MAX_SIZE:
        raise ValueError(f"size {text!r} is larger than any address space (2**64 bytes)")
    return size


def size_argument(text: str) -> int:
    """``parse_size`` as an argparse type: a bad size is a usage error (exit code 2)."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def format_size(size: int) -> str:
    """``size`` bytes in the largest binary unit that keeps it readable (``1.5G``)."""
    for unit in ("P", "T", "G", "M", "K"):
        multiplier = _MULTIPLIERS[unit]
        if size >= multiplier:
            value = size / multiplier
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return str(size)


def format_exact_size(size: int) -> str:
    """``size`` bytes in the largest binary unit that divides it (``3074M``): what a
    command suggested to the user must read back as exactly that many bytes."""
    for unit in ("P", "T", "G", "M", "K"):
        if size and size % _MULTIPLIERS[unit] == 0:
            return f"{size // _MULTIPLIERS[unit]}{unit}"
    return str(size)
