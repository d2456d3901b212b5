# cython: language_level=3
"""Robust process-shared mutexes, for ``_shared``."""

from mshare._layout cimport pthread_mutex_t

cdef int init_mutex(pthread_mutex_t *mutex) except -1
cdef int wait_for(pthread_mutex_t *mutex, double timeout) except? -1
cdef lock_error(int rc, str what, double timeout, object name)
cdef double timeout_seconds(object timeout) except? -2
