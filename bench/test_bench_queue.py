"""Figure 11: handing numpy arrays from producer processes to consumer processes.

mshare's queue, as ``put`` (one copy) and as ``reserve`` (written in place, no copy), each
read with a zero-copy ``get``, against ``multiprocessing.Queue``, faster-fifo, iceoryx2's
publish/subscribe with its loan API and a ``multiprocessing.Pipe`` sending raw bytes
(``bench/queue_peers.py`` says how each is driven and how many copies it makes), and the
machine's floor for the latency: a bare futex wake of a process blocked in ``FUTEX_WAIT``.

- Throughput: producers send as fast as they can; items and bytes per second from the
  first producer's start to the last consumer's last item, both read from the same
  monotonic clock.
- Latency: each producer sends one item every ``pace`` seconds, so consumers wait for each
  item (blocked in ``get``: mshare sleeps on a futex, never polls); an item's latency is its
  consumer's clock after the receive minus the stamp its producer wrote before sending.

One producer to one consumer and four to four, for 1 KiB, 64 KiB, 1 MiB and 16 MiB arrays.
Run: ``python -m bench -- -k queue``; ``MSHARE_BENCH_SMOKE=1`` for a quick check.
"""

from __future__ import annotations

import multiprocessing
import time

import numpy
import pytest

from bench.conftest import SMOKE
from bench.machine import KiB, MiB
from bench.queue_peers import CONTENDERS

SIZES = [1 * KiB, 1 * MiB] if SMOKE else [1 * KiB, 64 * KiB, 1 * MiB, 16 * MiB]
TOPOLOGIES = [(1, 1), (4, 4)]
# Bytes each throughput run moves, and its bounds in items.
THROUGHPUT_BYTES, THROUGHPUT_ITEMS = (4 * MiB, (8, 200)) if SMOKE else (512 * MiB, (32, 20_000))
# Items each latency run measures, and the pause between a producer's items.
LATENCY_BYTES, LATENCY_ITEMS = (2 * MiB, (8, 50)) if SMOKE else (256 * MiB, (30, 1000))
CHILD_TIMEOUT = 300


def items_for(size: int, budget: int, bounds: tuple[int, int]) -> int:
    return min(max(budget // size, bounds[0]), bounds[1])


def pace_for(size: int) -> float:
    """Long enough that the slowest peer has moved one item before the next is sent."""
    return max(0.001, 3 * size / 1e9)


def _produce(contender, channel, index, size, count, pace, steps, results):
    steps.wait()  # the consumers' ends exist
    end = contender.producer(channel, index, size)
    try:
        steps.wait()
        began = time.perf_counter_ns()
        for _ in range(count):
            end.send(time.perf_counter_ns())
            if pace:
                time.sleep(pace)
        results.put(("producer", began))
        steps.wait()  # an iceoryx2 sample lives only as long as its publisher
    finally:
        end.close()


def _consume(contender, channel, index, size, count, steps, results):
    end = contender.consumer(channel, index, size)
    try:
        steps.wait()
        steps.wait()
        latencies = []
        for _ in range(count):
            stamp = end.receive()
            latencies.append(time.perf_counter_ns() - stamp)
        results.put(("consumer", time.perf_counter_ns(), latencies))
        steps.wait()
    finally:
        end.close()


def hand_over(contender, size: int, topology: tuple[int, int], items: int, pace: float):
    """Run one hand-over of ``items`` items; (seconds, latencies in ns of every item)."""
    producers, consumers = topology
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    # Three steps, everyone in step, this process included: consumers make their ends (an
    # iceoryx2 subscriber must exist before its publisher connects), then producers theirs;
    # all start at once; no end closes before every item has arrived.
    steps = context.Barrier(producers + consumers + 1, timeout=CHILD_TIMEOUT)
    per_producer = items // producers
    total = per_producer * producers
    shares = [total // consumers + (i < total % consumers) for i in range(consumers)]
    with contender.channel(size, producers) as channel:
        children = [context.Process(target=_consume, args=(contender, channel, i, size, share,
                                                            steps, results))
                    for i, share in enumerate(shares)]
        children += [context.Process(target=_produce, args=(
            contender, channel, i, size, per_producer, pace, steps, results))
            for i in range(producers)]
        for child in children:
            child.start()
        for _ in range(2):
            steps.wait()
        reports = [results.get(timeout=CHILD_TIMEOUT) for _ in children]
        steps.wait()
        for child in children:
            child.join(CHILD_TIMEOUT)
            assert child.exitcode == 0, f"{contender.name}: a child exited {child.exitcode}"
    began = min(report[1] for report in reports if report[0] == "producer")
    finished = max(report[1] for report in reports if report[0] == "consumer")
    latencies = [ns for report in reports if report[0] == "consumer" for ns in report[2]]
    assert len(latencies) == total
    return (finished - began) / 1e9, latencies


def _topology_name(topology):
    return f"{topology[0]} to {topology[1]}"


def every_case(test):
    """Each contender at each size in each topology."""
    for name, values, ids in (("topology", TOPOLOGIES, _topology_name), ("size", SIZES, None),
                              ("contender", CONTENDERS, lambda contender: contender.name)):
        test = pytest.mark.parametrize(name, values, ids=ids)(test)
    return test


def measure(benchmark, measurement, contender, size, topology, items, pace):
    """One hand-over as one benchmark round, described in extra_info; (seconds, latencies
    in µs)."""
    reason = contender.unavailable(topology[0])
    if reason:
        pytest.skip(reason)
    measured = {}

    def run():
        measured["result"] = hand_over(contender, size, topology, items, pace)

    benchmark.group = f"11 queue {measurement}, {_topology_name(topology)}"
    benchmark.pedantic(run, rounds=1, iterations=1)
    seconds, latencies = measured["result"]
    producers, consumers = topology
    benchmark.extra_info.update(
        backend=contender.name, family=contender.family, size=size, producers=producers,
        consumers=consumers, items=len(latencies), copies_per_item=contender.copies,
        bytes_copied_per_item=contender.copies * size, pace_s=pace,
        layout="pairs" if contender.pairs and producers > 1 else "shared")
    return seconds, numpy.array(latencies) / 1e3


@every_case
def test_queue_throughput(benchmark, contender, size, topology):
    if not contender.throughput:
        pytest.skip(f"{contender.name} measures latency only")
    items = items_for(size, THROUGHPUT_BYTES, THROUGHPUT_ITEMS)
    seconds, latencies = measure(benchmark, "throughput", contender, size, topology, items, 0)
    benchmark.extra_info.update(items_per_s=len(latencies) / seconds,
                                gb_per_s=len(latencies) * size / seconds / 1e9)


@every_case
def test_queue_latency(benchmark, contender, size, topology):
    items = items_for(size, LATENCY_BYTES, LATENCY_ITEMS)
    _, latencies = measure(benchmark, "latency", contender, size, topology, items,
                           pace_for(size))
    benchmark.extra_info.update(median_latency_us=float(numpy.median(latencies)),
                                p99_latency_us=float(numpy.percentile(latencies, 99)))
