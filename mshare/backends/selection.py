"""Which backend a new region lives in: ``create(..., hugepages=...)``.

``"auto"`` takes the best that can hold the region — ``hugetlb`` (shared page tables),
then ``thp`` (512-fold smaller page tables), then ``shm`` (4 KiB pages, everywhere) —
and a huge-page backend only for a region of at least one huge page. It never fails for
want of huge pages: when huge pages were clearly set up but cannot hold this region (a
pool too small, a full huge-page tmpfs, an override pointing nowhere) it says so with a
``HugePagesFallbackWarning`` and moves on; on a machine with nothing set up it falls
back silently. ``"hugetlb"`` and ``"thp"`` demand their backend, as PostgreSQL's
``huge_pages=on`` does: ``HugePagesUnavailableError`` names what is missing and the
command that fixes it. ``"off"`` is ``shm``.
"""

import warnings
from typing import Callable, Dict, Iterator, Protocol, Tuple, Union

from mshare.backends import get_backend, hugetlb, thp
from mshare.backends.base import Backend
from mshare.backends.files import Unavailable
from mshare.errors import HugePagesFallbackWarning, HugePagesUnavailableError

CHOICES = ("auto", "hugetlb", "thp", "off")


class Planner(Protocol):
    """A huge-page backend's ``plan``: the backend that can hold the region, or why not."""

    def __call__(self, size: int, tail_length: Callable[[int], int],
                 auto: bool) -> Union[Backend, Unavailable]: ...


PLANNERS: Dict[str, Planner] = {"hugetlb": hugetlb.plan, "thp": thp.plan}


def validate_hugepages(hugepages: object) -> str:
    """Return ``hugepages`` if it is one of ``CHOICES``, else raise ``TypeError``/``ValueError``."""
    if not isinstance(hugepages, str):
        raise TypeError(f"hugepages must be str, not {type(hugepages).__name__}")
    if hugepages not in CHOICES:
        raise ValueError(f"hugepages must be one of {', '.join(map(repr, CHOICES))}, not {hugepages!r}")
    return hugepages


def choose_backend(hugepages: str, size: int, tail_length: Callable[[int], int]) -> Backend:
    """The backend, bound to a mount where it needs one, for a region of ``size`` bytes
    followed by ``tail_length(page_size)`` bytes of bookkeeping; ``hugepages`` is one of
    ``CHOICES`` (``validate_hugepages``)."""
    if hugepages == "off":
        return get_backend("shm")
    if hugepages in PLANNERS:
        choice = PLANNERS[hugepages](size, tail_length, auto=False)
        if isinstance(choice, Unavailable):
            raise HugePagesUnavailableError(
                choice.errno, f"cannot use the {hugepages} backend: {choice.message}"
            )
        return choice
    for kind, choice in candidates(size, tail_length):
        if not isinstance(choice, Unavailable):
            return choice
        if choice.configured:
            # stacklevel 3: the warning points at the caller of mshare.create.
            warnings.warn(
                f"hugepages='auto' did not use {kind}: {choice.message}", HugePagesFallbackWarning,
                stacklevel=3,
            )
    return get_backend("shm")


def candidates(size: int, tail_length: Callable[[int], int]) -> Iterator[Tuple[str, Union[Backend, Unavailable]]]:
    """``(kind, backend or Unavailable)`` for each huge-page backend in ``auto``'s order of
    preference, each planned only when asked for (``mshare doctor`` asks for them all)."""
    for kind, planner in PLANNERS.items():
        yield kind, planner(size, tail_length, auto=True)
