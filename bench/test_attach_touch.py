"""Figure 3 and its scale curve: a new process attaches a resident region and touches every page.

Each round starts a fresh interpreter alone and waits until it has imported everything;
then it is told to attach, and reads and writes one byte in every page at the page size
the kernel maps. The figure is the child's own clock (`extra_info["inside_s"]`); the
benchmark's statistics are the same step seen from here, a pipe round trip longer.
"""

from __future__ import annotations

import statistics

import pytest

from bench.conftest import SIZES, resident_region
from bench.fleet import Child
from bench.machine import human


@pytest.mark.benchmark(group="3 attach and touch")
@pytest.mark.parametrize("size", SIZES.attach_touch_sizes, ids=human)
def test_attach_and_touch(benchmark, backend, size):
    with resident_region(backend, size) as name:
        children: list[Child] = []
        answers: list[dict] = []

        def start_child():
            while children:
                children.pop().stop()
            children.append(Child(backend.name, name))
            children[0].receive("ready")

        def attach_and_touch():
            children[0].send("attach")
            answers.append(children[0].receive("attached"))

        try:
            benchmark.pedantic(attach_and_touch, setup=start_child,
                               rounds=SIZES.attach_touch_rounds)
        finally:
            codes = [child.stop() for child in children]
        assert codes == [0]
        benchmark.extra_info.update(
            backend=backend.name, family=backend.family, size=size,
            page_size=answers[0]["page_size"], pages=answers[0]["pages"],
            inside_s=[answer["total_s"] for answer in answers],
            attach_s=[answer["attach_s"] for answer in answers],
            median_inside_s=statistics.median(answer["total_s"] for answer in answers),
        )
