"""Backends make, open and remove the data object behind a region.

A backend knows nothing about region names: the registry gives it a *location* it
derived from the registry's identity and the region id, so different registries
never collide in the data objects they use.
"""

from mshare.backends.base import Backend
from mshare.backends.hugetlb import HugetlbBackend
from mshare.backends.shm import ShmBackend
from mshare.backends.thp import ThpBackend

BACKENDS = {backend.name: backend for backend in (ShmBackend(), HugetlbBackend(), ThpBackend())}


def get_backend(name: str) -> Backend:
    """The backend called ``name``; ``ValueError`` for an unknown one."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}"
        ) from None


__all__ = ["Backend", "BACKENDS", "get_backend"]
