"""The ways of handing arrays between processes that the queue benchmark compares.

Each contender opens a channel in the benchmark process (before the fork, so the children
inherit it) and gives every child one end: a producer end sends ``size``-byte uint8 arrays,
a consumer end receives them. Every item carries, in its first 8 bytes (or beside it where
the peer pickles), the ``perf_counter_ns`` at which the producer began to send it; the
consumer end returns that stamp, which is all it reads of the item.

``copies`` is how many times each contender copies the payload per item, by construction:

- mshare ``put``: 1 (into the slot); the consumer's ``get`` is a view of the slot;
- mshare ``reserve``: 0 (written in place); the consumer's ``get`` is a view;
- iceoryx2 loan: 0 (``loan_slice_uninit`` written in place); the subscriber reads the sample
  where it lies;
- ``multiprocessing.Pipe`` raw bytes: 2 (into the kernel's pipe buffer and out of it);
- ``multiprocessing.Queue`` and faster-fifo: 4 (pickled into bytes, into the pipe or the
  shared ring, out of it, unpickled into a new array).

The futex wake floor is no queue: it is what waking a process blocked in ``FUTEX_WAIT`` costs
on this machine, driven and measured like the others (latency only), so the queues' latency
can be read against it.

Point-to-point transports (a Pipe, an iceoryx2 service with its own publisher and
subscriber) run "4 to 4" as four independent pairs; the queues run it as one queue that
four producers and four consumers share.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.util
import mmap
import multiprocessing
import os
import platform
import queue as stdlib_queue
import shutil
import tempfile
import time
import uuid

import numpy

import mshare

STAMP = numpy.dtype("<i8")
# Slots (or buffered items) in every bounded channel: producers block once this many wait.
DEPTH = 8
# A peer's blocking call gives up after this long: only a broken run waits that long.
PATIENCE = 120.0


def _stamp_view(address: int) -> numpy.ndarray:
    """The 8-byte stamp at ``address`` as a one-element array (no copy)."""
    return numpy.ctypeslib.as_array((ctypes.c_uint8 * STAMP.itemsize).from_address(address)
                                    ).view(STAMP)


class Contender:
    name = ""
    family = "peer"
    copies = 0
    pairs = False  # "4 to 4" as four independent pairs
    throughput = True  # False: it has no back-pressure, so it measures latency only
    module = ""  # the package it needs, if any

    def unavailable(self, producers: int) -> str | None:
        if self.module and importlib.util.find_spec(self.module) is None:
            return f"{self.name}: {self.module} is not installed (pip install .[bench])"
        return None

    @contextlib.contextmanager
    def channel(self, size: int, pairs: int):
        """What the children share: one channel per pair for point-to-point contenders."""
        yield None

    def producer(self, channel, index: int, size: int):
        raise NotImplementedError

    def consumer(self, channel, index: int, size: int):
        raise NotImplementedError


class _MshareQueue(Contender):
    family = "mshare"

    @contextlib.contextmanager
    def channel(self, size, pairs):
        name = f"bench-queue-{uuid.uuid4().hex[:12]}"
        region = mshare.create(name, 2 * DEPTH * (size + 4096) + (1 << 20))
        region.queue("items", DEPTH, size)
        try:
            yield name
        finally:
            region.close()
            mshare.unlink(name)

    def consumer(self, name, index, size):
        return _MshareConsumer(name, size)


class _MshareEnd:
    def __init__(self, name, size):
        self.region = mshare.attach(name)
        self.items = self.region.queue("items")
        self.shape = (size,)

    def close(self):
        self.items = None
        self.region.close()


class _MshareConsumer(_MshareEnd):
    def receive(self):
        with self.items.get(timeout=PATIENCE) as item:
            return int(item[:STAMP.itemsize].view(STAMP)[0])


class _MsharePutter(_MshareEnd):
    def __init__(self, name, size):
        super().__init__(name, size)
        self.payload = numpy.zeros(size, numpy.uint8)
        self.stamp = self.payload[:STAMP.itemsize].view(STAMP)

    def send(self, now):
        self.stamp[0] = now
        self.items.put(self.payload, timeout=PATIENCE)


class _MshareReserver(_MshareEnd):
    def send(self, now):
        with self.items.reserve(self.shape, numpy.uint8, timeout=PATIENCE) as slot:
            slot[:STAMP.itemsize].view(STAMP)[0] = now


class MsharePut(_MshareQueue):
    name = "mshare put"
    copies = 1

    def producer(self, name, index, size):
        return _MsharePutter(name, size)


class MshareReserve(_MshareQueue):
    name = "mshare reserve"
    copies = 0

    def producer(self, name, index, size):
        return _MshareReserver(name, size)


class _PickledEnd:
    """An end of a queue that pickles: the stamp travels beside the array."""

    def __init__(self, queue, size, put_arguments, get_arguments):
        self.queue, self.payload = queue, numpy.zeros(size, numpy.uint8)
        self.put_arguments, self.get_arguments = put_arguments, get_arguments

    def send(self, now):
        self.queue.put((now, self.payload), **self.put_arguments)

    def receive(self):
        stamp, _ = self.queue.get(**self.get_arguments)
        return stamp

    def close(self):
        pass


class MultiprocessingQueue(Contender):
    name = "multiprocessing.Queue"
    copies = 4

    @contextlib.contextmanager
    def channel(self, size, pairs):
        queue = multiprocessing.get_context("fork").Queue(DEPTH)
        yield queue
        queue.close()

    def producer(self, queue, index, size):
        return _PickledEnd(queue, size, {"timeout": PATIENCE}, {})

    def consumer(self, queue, index, size):
        return _PickledEnd(queue, 0, {}, {"timeout": PATIENCE})


class _RetryingEnd(_PickledEnd):
    """A faster-fifo end that waits in short tries: with four producers and four consumers
    of 1 MiB items, a blocked call of faster-fifo 1.5.2 here sometimes sleeps through the
    item or the room it waits for, and only a new try sees it."""

    TRY = 0.05

    def send(self, now):
        self._retry(self.queue.put, (now, self.payload), stdlib_queue.Full)

    def receive(self):
        stamp, _ = self._retry(self.queue.get, None, stdlib_queue.Empty)
        return stamp

    def _retry(self, call, item, waited_in_vain):
        deadline = time.monotonic() + PATIENCE
        arguments = () if item is None else (item,)
        while True:
            try:
                return call(*arguments, timeout=self.TRY)
            except waited_in_vain:
                if time.monotonic() > deadline:
                    raise


class FasterFifo(Contender):
    name = "faster-fifo"
    copies = 4
    module = "faster_fifo"

    @contextlib.contextmanager
    def channel(self, size, pairs):
        import faster_fifo

        # Room for DEPTH pickled items and their framing.
        yield faster_fifo.Queue(max_size_bytes=DEPTH * (size + 4096))

    def producer(self, queue, index, size):
        return _RetryingEnd(queue, size, {}, {})

    def consumer(self, queue, index, size):
        return _RetryingEnd(queue, 0, {}, {})


class _PipeEnd:
    def __init__(self, connection, size):
        self.connection, self.payload = connection, numpy.zeros(size, numpy.uint8)
        self.stamp = self.payload[:STAMP.itemsize].view(STAMP)

    def send(self, now):
        self.stamp[0] = now
        self.connection.send_bytes(self.payload)

    def receive(self):
        return int.from_bytes(self.connection.recv_bytes()[:STAMP.itemsize], "little",
                              signed=True)

    def close(self):
        self.connection.close()


class MultiprocessingPipe(Contender):
    name = "multiprocessing.Pipe bytes"
    copies = 2
    pairs = True

    @contextlib.contextmanager
    def channel(self, size, pairs):
        pipes = [multiprocessing.get_context("fork").Pipe(duplex=False) for _ in range(pairs)]
        yield pipes
        for receiving, sending in pipes:
            receiving.close()
            sending.close()

    def producer(self, pipes, index, size):
        return _PipeEnd(pipes[index][1], size)

    def consumer(self, pipes, index, size):
        return _PipeEnd(pipes[index][0], 0)


class _IceoryxEnd:
    """One node and one port of an iceoryx2 publish/subscribe service of byte slices."""

    def __init__(self, place, service_name, size, publishing):
        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Error)
        prefix, root = place
        config = iox2.config.default()
        config.global_cfg.prefix = iox2.FileName.new(prefix)
        config.global_cfg.root_path = iox2.Path.new(root + "/")
        self.node = (iox2.NodeBuilder.new().config(config)
                     .signal_handling_mode(iox2.SignalHandlingMode.Disabled)
                     .create(iox2.ServiceType.Ipc))
        self.service = (self.node.service_builder(iox2.ServiceName.new(service_name))
                        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
                        .max_publishers(1).max_subscribers(1)
                        .subscriber_max_buffer_size(DEPTH).history_size(0)
                        .enable_safe_overflow(False).open_or_create())
        self.size = size
        if publishing:
            # A full subscriber makes the publisher wait: no sample is dropped.
            self.port = (self.service.publisher_builder().initial_max_slice_len(size)
                         .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
                         .create())
        else:
            self.port = self.service.subscriber_builder().buffer_size(DEPTH).create()

    def send(self, now):
        while True:
            sample = self.port.loan_slice_uninit(self.size)
            _stamp_view(sample.payload_ptr)[0] = now
            # Under load a send here sometimes reports that it reached no subscriber, and
            # that sample is never received: send it again.
            if sample.assume_init().send():
                return

    def receive(self):
        # Its subscriber has no blocking receive: it polls, yielding the CPU between tries.
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            sample = self.port.receive()
            if sample is not None:
                stamp = int(_stamp_view(sample.payload_ptr)[0])
                sample.delete()
                return stamp
            os.sched_yield()
        raise TimeoutError(f"no iceoryx2 sample came in {PATIENCE} s")

    def close(self):
        self.port.delete()
        self.port = self.service = self.node = None


class IceoryxLoan(Contender):
    name = "iceoryx2 loan"
    copies = 0
    pairs = True
    module = "iceoryx2"

    @contextlib.contextmanager
    def channel(self, size, pairs):
        """Service names, and a file prefix and root of this channel's own: iceoryx2 leaves
        files in /dev/shm and under its root, which go when the channel closes. The prefix
        starts like the benchmark's region names, so a check for leftovers sees them."""
        prefix = f"bench-{os.getpid()}-iox2-{uuid.uuid4().hex[:12]}-"
        root = tempfile.mkdtemp(prefix=prefix)
        try:
            yield (prefix, root), [f"mshare-bench-{pair}" for pair in range(pairs)]
        finally:
            for leftover in glob.glob(os.path.join("/dev/shm", glob.escape(prefix) + "*")):
                os.unlink(leftover)
            shutil.rmtree(root)

    def producer(self, channel, index, size):
        place, names = channel
        end = _IceoryxEnd(place, names[index], size, publishing=True)
        # Its subscriber exists by now; a sample sent before the publisher has connected to
        # it reaches nobody, so connect first.
        deadline = time.monotonic() + PATIENCE
        while end.service.dynamic_config.number_of_subscribers < 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the iceoryx2 subscriber of {names[index]} never appeared")
            time.sleep(0.001)
        end.port.update_connections()
        return end

    def consumer(self, channel, index, size):
        place, names = channel
        return _IceoryxEnd(place, names[index], size, publishing=False)


# FUTEX_WAIT and FUTEX_WAKE on a word shared between processes (not the private variants).
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _FutexEnd:
    """One end of a futex ping over a shared page: a 32-bit sequence (the futex word) and
    the last stamp. The sender stores the stamp, moves the sequence on and wakes; the
    receiver sleeps in FUTEX_WAIT until the sequence reaches the item it waits for."""

    _libc = ctypes.CDLL(None, use_errno=True)
    _slice = _Timespec(1, 0)  # a sleeper looks at the clock this often, to give up in time

    def __init__(self, page):
        self.sequence = ctypes.c_uint32.from_buffer(page, 0)
        self.stamp = ctypes.c_int64.from_buffer(page, 8)
        self.address = ctypes.addressof(self.sequence)
        self.expected = 0

    def send(self, now):
        self.stamp.value = now
        self.sequence.value += 1  # one sender per page
        self._futex(_FUTEX_WAKE, 1, None)

    def receive(self):
        self.expected = (self.expected + 1) & 0xFFFFFFFF
        deadline = time.monotonic() + PATIENCE
        while True:
            seen = self.sequence.value
            if (seen - self.expected) & 0x80000000 == 0:  # reached, wrap-around aside
                return self.stamp.value
            if time.monotonic() > deadline:
                raise TimeoutError(f"no futex wake came in {PATIENCE} s")
            self._futex(_FUTEX_WAIT, seen, ctypes.byref(self._slice))

    def _futex(self, operation, value, timeout):
        self._libc.syscall(_SYS_FUTEX, ctypes.c_void_p(self.address), operation,
                           ctypes.c_uint32(value), timeout, None, 0)

    def close(self):
        self.sequence = self.stamp = None  # their exports of the page go with them


class FutexFloor(Contender):
    name = "futex wake floor"
    pairs = True
    throughput = False

    def unavailable(self, producers):
        if _SYS_FUTEX is None:
            return f"{self.name}: no futex system call number known for {platform.machine()}"
        return None

    @contextlib.contextmanager
    def channel(self, size, pairs):
        pages = [mmap.mmap(-1, mmap.PAGESIZE) for _ in range(pairs)]  # shared, anonymous
        yield pages
        for page in pages:
            page.close()

    def producer(self, pages, index, size):
        return _FutexEnd(pages[index])

    def consumer(self, pages, index, size):
        return _FutexEnd(pages[index])


CONTENDERS = [MsharePut(), MshareReserve(), MultiprocessingQueue(), FasterFifo(),
              IceoryxLoan(), MultiprocessingPipe(), FutexFloor()]
