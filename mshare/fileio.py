"""Small helpers for whole-file reads and writes on descriptors the caller owns."""

import os
from typing import List, Optional, Union


def read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``, reading until end of file."""
    chunks: List[bytes] = []
    total = 0
    while total < limit:
        chunk = os.read(fd, limit - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: Union[bytes, bytearray, memoryview]) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def unlink_quietly(file_name: str, dir_fd: Optional[int]) -> None:
    """Remove ``file_name`` if it is still there."""
    try:
        os.unlink(file_name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
