"""Sizes in human units: ``64M``, ``2G``, ``1.5GiB`` (binary multiples)."""

import re

_MULTIPLIERS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*\Z", re.IGNORECASE)


def parse_size(text):
    """Bytes in ``text`` (``"4096"``, ``"64M"``, ``"2G"``, ``"1.5GiB"``); ``ValueError`` otherwise."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 4096, 64M, 2G)")
    number, unit = match.groups()
    size = float(number) * _MULTIPLIERS[unit.upper()]
    if size != int(size):
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    return int(size)


def format_size(size):
    """``size`` bytes in the largest binary unit that keeps it readable (``1.5G``)."""
    for unit in ("P", "T", "G", "M", "K"):
        multiplier = _MULTIPLIERS[unit]
        if size >= multiplier:
            value = size / multiplier
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return str(size)


def format_exact_size(size):
    """``size`` bytes in the largest binary unit that divides it (``3074M``): what a
    command suggested to the user must read back as exactly that many bytes."""
    for unit in ("P", "T", "G", "M", "K"):
        if size and size % _MULTIPLIERS[unit] == 0:
            return f"{size // _MULTIPLIERS[unit]}{unit}"
    return str(size)
