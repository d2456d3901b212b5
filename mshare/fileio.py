"""Small helpers for whole-file reads and writes on descriptors the caller owns."""

import os
from typing import Optional, Union


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
