# cython: language_level=3, embedsignature=True
"""Slots of the named-object table: name checks, and reads that take no lock.

A slot's ``seq`` is odd while a writer (holding the internal lock) changes it, and moves on
with every change, so a reader that copies a slot between two equal, even ``seq`` values
has a consistent copy. Read-only attachers, who cannot take the lock, rely on this.
"""

from libc.stdint cimport uint32_t
from libc.string cimport memchr, memcmp, memcpy

from mshare._layout cimport MS_NAME_BYTES, MS_SLOT_LIVE, ms_fence, ms_load32, ms_slot_t

NAME_MAX_BYTES = MS_NAME_BYTES - 1

# A lock-free reader gives up on a slot that keeps changing under it after this many tries.
cdef int READ_RETRIES = 1000


cdef uint32_t name_hash(bytes name) noexcept:
    """FNV-1a: a cheap filter so a lookup compares few names."""
    cdef uint32_t h = 2166136261u
    cdef unsigned char c
    for c in name:
        h = (h ^ c) * 16777619u
    return h


cdef bytes encode_name(object name):
    if not isinstance(name, str):
        raise TypeError(f"an object name must be a str, not {type(name).__name__}")
    encoded = name.encode()
    if not 1 <= len(encoded) <= NAME_MAX_BYTES or b"\0" in encoded:
        raise ValueError(f"an object name must be 1-{NAME_MAX_BYTES} bytes of UTF-8 "
                         f"without NUL, not {name!r}")
    return encoded


cdef bytes fixed_string(const char *field, size_t capacity):
    """The NUL-terminated string in a fixed-size field, never reading past the field."""
    cdef const char *stop = <const char *>memchr(field, 0, capacity)
    return field[:(stop - field) if stop != NULL else capacity]


cdef bint holds_name(ms_slot_t *slot, bytes name) noexcept:
    cdef size_t length = len(name)
    return (length < MS_NAME_BYTES and slot.name[length] == 0
            and memcmp(slot.name, <const char *>name, length) == 0)


cdef bint read_slot(ms_slot_t *slot, ms_slot_t *copy) noexcept:
    """Copy a slot that is LIVE and not changing; False if it is neither."""
    cdef uint32_t seq
    cdef int attempt
    for attempt in range(READ_RETRIES):
        seq = ms_load32(&slot.seq)
        if seq & 1:
            return False
        memcpy(copy, slot, sizeof(ms_slot_t))
        ms_fence()
        if ms_load32(&slot.seq) == seq:
            return copy.state == MS_SLOT_LIVE
    return False
