"""The ``backend`` fixture: a reliability test runs once per backend (``shm``, ``thp``,
``hugetlb``), with regions large enough to really land there.

``hugepages="auto"`` never puts a region smaller than one huge page on huge pages, so a
test with small regions covers only ``shm``; this fixture names the backend explicitly
and sizes regions to at least one 2 MiB page on the huge-page ones. The huge-page
backends get private mounts (``hugepage_fixtures``), which children inherit.
"""

from dataclasses import dataclass

import pytest

HUGE_PAGE = 2 << 20


@dataclass(frozen=True)
class BackendUnderTest:
    name: str          # as ``Region.backend`` and ``RegionInfo.backend`` report it
    hugepages: str     # the ``create(..., hugepages=)`` argument that selects it
    smallest: int      # no region of this test is smaller

    def size(self, wanted):
        """A region size of at least ``wanted`` bytes that this backend really serves,
        keeping ``wanted``'s offset within a page so odd sizes stay odd."""
        return wanted if wanted >= self.smallest else self.smallest + wanted

    def create_code(self, name, wanted, extra=""):
        """``mshare.create(...)`` as child-interpreter source, for this backend."""
        return f"mshare.create({name!r}, {self.size(wanted)}, hugepages={self.hugepages!r}{extra})"


BACKENDS = {
    "shm": BackendUnderTest("shm", "off", 1),
    "thp": BackendUnderTest("thp", "thp", HUGE_PAGE),
    "hugetlb": BackendUnderTest("hugetlb", "hugetlb", HUGE_PAGE),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    chosen = BACKENDS[request.param]
    if chosen.name == "thp":
        request.getfixturevalue("thp_root")
    elif chosen.name == "hugetlb":
        request.getfixturevalue("hugetlbfs")
    return chosen
