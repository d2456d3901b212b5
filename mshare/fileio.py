"""Small helpers for whole-file reads and writes on descriptors the caller owns."""

import os


def read_at_most(fd, limit):
    """Up to ``limit`` bytes from ``fd``, reading until end of file."""
    chunks, total = [], 0
    while total < limit:
        chunk = os.read(fd, limit - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def unlink_quietly(file_name, dir_fd):
    """Remove ``file_name`` if it is still there."""
    try:
        os.unlink(file_name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
