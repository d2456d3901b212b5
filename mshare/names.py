"""Validation of region names, sizes and modes: the rules msharefs file names follow."""

from typing import Final

MAX_NAME_BYTES: Final = 255
RESERVED_NAMES: Final = frozenset({"mshare_info"})


def validate_name(name: object) -> str:
    """Return ``name`` if it can name a region, else raise ``TypeError``/``ValueError``."""
    if not isinstance(name, str):
        raise TypeError(f"region name must be str, not {type(name).__name__}")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"region name {name!r} is not valid UTF-8") from None
    if not 1 <= len(encoded) <= MAX_NAME_BYTES:
        raise ValueError(
            f"region name must be 1 to {MAX_NAME_BYTES} bytes in UTF-8, got {len(encoded)}"
        )
    if "/" in name:
        raise ValueError(f"region name {name!r} must not contain '/'")
    if "\0" in name:
        raise ValueError("region name must not contain a NUL character")
    # Dot-files are the registry's own bookkeeping (lock, address ranges, temporary files).
    if name.startswith("."):
        raise ValueError(f"region name {name!r} must not start with '.'")
    if name in RESERVED_NAMES:
        raise ValueError(f"region name {name!r} is reserved by the registry")
    return name


def _require_int(value: object, what: str) -> int:
    # bool is an int subclass, but create("x", True) is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be int, not {type(value).__name__}")
    return value


def validate_size(size: object) -> int:
    """Return ``size`` if it is a positive int, else raise ``TypeError``/``ValueError``."""
    size = _require_int(size, "size")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return size


def validate_mode(mode: object) -> int:
    """Return ``mode`` if it is a permission mode 0..0o777, else raise."""
    mode = _require_int(mode, "mode")
    if not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be between 0 and 0o777, got {oct(mode) if mode >= 0 else mode}")
    return mode
