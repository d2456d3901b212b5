# cython: language_level=3
"""Slots of the named-object table, for ``_shared``."""

from libc.stdint cimport uint32_t

from mshare._layout cimport ms_slot_t

cdef uint32_t name_hash(bytes name) noexcept
cdef bytes encode_name(object name)
cdef bytes fixed_string(const char *field, size_t capacity)
cdef bint holds_name(ms_slot_t *slot, bytes name) noexcept
cdef bint read_slot(ms_slot_t *slot, ms_slot_t *copy) noexcept
