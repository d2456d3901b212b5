"""Ctrl-C at any instant: ``SIGINT`` delivered at random moments across tens of thousands
of calls of every public function (failing ones too) leaves exactly what the completed
calls account for: no descriptor, mapping, registry file or data object more, and nothing
for ``mshare gc`` to remove."""

import gc
import os
import pickle
import random
import signal
import sys
import threading
import time

import numpy  # imported before the storm: an import interrupted half-way cannot be retried
import pytest

import mshare
from consistency import INDEX_DIRECTORY, assert_index_covers_ranges
from figures import record, scaled
from helpers import huge_page_objects_of, shm_objects_of
from mshare import addresses, machine, procmaps
from mshare.registry import INFO_FILE, Registry, range_file_name

PACKAGE = os.path.dirname(mshare.__file__)
NAMES = [f"storm-{index}" for index in range(3)]
EXPECTED = (FileExistsError, FileNotFoundError, ValueError, PermissionError, MemoryError)


class NoHandle(Exception):
    """The call chosen needs an open handle and none is: nothing was called."""


class Storm:
    """Raises ``KeyboardInterrupt`` for a SIGINT that arrives while a call is armed, once
    per call, and counts what happened."""

    def __init__(self):
        self.armed = False
        self.calls = self.delivered = self.interrupted = self.inside = self.failed = 0
        self.skipped = self.in_finalizers = 0
        self.other_unraisable = []

    def unraisable(self, unraisable):
        """An interrupt that landed in a finalizer's Python code (say a weak set's
        callback), which Python reports and ignores. Counted, and not kept: keeping its
        traceback would keep every object of the interrupted frames alive."""
        if unraisable.exc_type is KeyboardInterrupt:
            self.in_finalizers += 1
        else:
            self.other_unraisable.append(repr(unraisable.exc_value))

    def handler(self, signum, frame):
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt

    def run(self, operation):
        self.calls += 1
        try:
            try:
                self.armed = True
                operation()
            finally:
                self.armed = False
        except KeyboardInterrupt as interrupt:
            self.interrupted += 1
            if _raised_inside_mshare(interrupt):
                self.inside += 1
        except EXPECTED:
            self.failed += 1
        except NoHandle:
            self.skipped += 1


def _raised_inside_mshare(error):
    """True when the frame the handler interrupted is mshare's."""
    frames, traceback = [], error.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    interrupted = frames[-2]  # the last one is the handler's
    return interrupted.f_code.co_filename.startswith(PACKAGE)


class Interrupter(threading.Thread):
    """Sends SIGINT to the main thread at random moments until stopped."""

    def __init__(self, storm):
        super().__init__(daemon=True)
        self.storm = storm
        self.stop = threading.Event()
        self.main = threading.main_thread().ident

    def run(self):
        chooser = random.Random()
        while not self.stop.is_set():
            time.sleep(chooser.uniform(0, 0.002))
            signal.pthread_kill(self.main, signal.SIGINT)
            self.storm.delivered += 1


def operations(handles, size, hugepages, chooser):
    """Every public call, chosen at random; a few always fail."""
    def a_name():
        return chooser.choice(NAMES)

    def a_handle():
        if not handles:
            raise NoHandle
        return chooser.choice(handles)

    def create():
        handles.append(mshare.create(a_name(), size, hugepages=hugepages))

    def attach():
        handles.append(mshare.attach(a_name(), readonly=chooser.random() < 0.3))

    def close():
        if handles:
            handles.pop(chooser.randrange(len(handles))).close()

    def drop():
        if handles:
            handles.pop(chooser.randrange(len(handles)))

    def lock():
        with a_handle().lock(timeout=30):
            pass

    def alloc():
        region = a_handle()
        region.free(region.alloc(chooser.choice([64, 4096])))

    def array():
        region = a_handle()
        array_name = f"array-{chooser.randrange(4)}"
        if chooser.random() < 0.5:
            region.array(array_name, (8,), "int64", exist_ok=True)
        else:
            region.delete(array_name)

    def unpickle():
        handles.append(pickle.loads(pickle.dumps(a_handle())))

    return [
        create, create, create, attach, attach, attach, close, drop, lock, alloc, array, unpickle,
        lambda: mshare.unlink(a_name()),
        lambda: mshare.info(a_name()),
        lambda: mshare.list(),
        lambda: a_handle().names(),
        lambda: a_handle().ndarray("uint8")[:1].sum(),
        lambda: a_handle().populate(),
        lambda: mshare.gc(dry_run=True),
        lambda: mshare.attach("never-created"),
        lambda: mshare.create(a_name(), 0),
        lambda: mshare.unlink("never-created"),
        lambda: a_handle().alloc(1 << 40),
    ]


def descriptors():
    found = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            found[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            pass  # the one listdir used
    return found


def arena_mappings():
    return procmaps.overlapping(*addresses.arena())


def storm_over(registry_path, calls, size, hugepages, topic):
    chooser = random.Random()
    handles = []
    # Warm up (imports, lazily made registry files) before the baseline is taken.
    mshare.create("warm-up", size, hugepages=hugepages).close()
    mshare.unlink("warm-up")
    # The mount table, which some calls read, keeps one descriptor open for the process's
    # life (its mountinfo, polled for changes): opened now, it is part of the baseline.
    machine.mounts()
    before = descriptors()
    storm = Storm()
    choices = operations(handles, size, hugepages, chooser)
    original = signal.signal(signal.SIGINT, storm.handler)
    original_unraisable, sys.unraisablehook = sys.unraisablehook, storm.unraisable
    interrupter = Interrupter(storm)
    interrupter.start()
    try:
        for _ in range(calls):
            storm.run(chooser.choice(choices))
    finally:
        interrupter.stop.set()
        interrupter.join()
        signal.signal(signal.SIGINT, original)
        sys.unraisablehook = original_unraisable
    for region in handles:
        region.close()
    handles.clear()
    gc.collect()
    mshare.list()  # a safe point, where ranges of dropped regions are released

    # Exactly what the completed calls account for: the regions in the registry.
    with Registry(registry_path) as registry:
        present = {name: registry.read_entry(name)[0] for name in registry.names()}
        registry_id = registry.registry_id
    assert set(present) <= set(NAMES)
    expected_files = set(present) | {range_file_name(entry.addr, entry.end)
                                     for entry in present.values()}
    assert set(os.listdir(registry_path)) - {INFO_FILE, INDEX_DIRECTORY} == expected_files
    assert_index_covers_ranges(registry_path)
    data_objects = {os.path.basename(entry.location) for entry in present.values()}
    assert set(shm_objects_of(registry_id)) | {
        os.path.basename(path) for path in huge_page_objects_of(registry_id)} == data_objects
    assert descriptors() == before
    assert arena_mappings() == []
    report = mshare.gc(dry_run=True)
    assert (report.removed, report.kept) == ([], [])
    assert storm.other_unraisable == []
    assert storm.interrupted > 0 and storm.inside > 0
    record(topic, calls=storm.calls - storm.skipped, interrupts_delivered=storm.delivered,
           interrupts_raised=storm.interrupted, raised_inside_mshare=storm.inside,
           failed_calls=storm.failed, interrupts_in_finalizers=storm.in_finalizers,
           regions_left=len(present))
    for name in present:
        mshare.unlink(name)


def test_interrupt_storm_on_shm(registry_path):
    storm_over(registry_path, scaled(40000), 4096, "off", "interrupt storm shm")


def test_interrupt_storm_on_hugetlb(registry_path, hugetlbfs):
    storm_over(registry_path, scaled(10000), 2 << 20, "hugetlb", "interrupt storm hugetlb")


def test_a_held_back_interrupt_is_raised_once_when_the_step_ends():
    from mshare.owned import signals_deferred

    handled = []

    def handler(signum, frame):
        handled.append(signum)
        raise KeyboardInterrupt

    original = signal.signal(signal.SIGINT, handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)
                assert handled == []  # recorded, not handled, inside the step
        assert handled == [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, original)


def test_ctrl_c_while_a_large_region_is_reserved_cancels_the_create(registry_path, name):
    """``create`` holds Ctrl-C back while it makes files, but not while it reserves many
    GiB (seconds on a big region): a SIGINT sent while the data object is still being
    filled cancels the create and leaves nothing behind."""
    size = 4 << 30
    mshare.create("warm-up", 4096).close()
    mshare.unlink("warm-up")
    with Registry(registry_path) as registry:
        registry_id = registry.registry_id
    for _attempt in range(5):
        during_reservation = []

        def interrupt_while_reserving():
            # Sent once the data object exists; it counts only if not yet fully reserved.
            while not during_reservation:
                for object_name in shm_objects_of(registry_id):
                    try:
                        blocks = os.stat(os.path.join("/dev/shm", object_name)).st_blocks
                    except FileNotFoundError:
                        continue
                    during_reservation.append(blocks * 512 < size)
                    os.kill(os.getpid(), signal.SIGINT)
                    return

        interrupter = threading.Thread(target=interrupt_while_reserving)
        interrupter.start()
        try:
            region = mshare.create(name, size, hugepages="off")
        except KeyboardInterrupt:
            region = None
        interrupter.join()
        if during_reservation == [True]:
            break
        # Sent only after the reservation ended (a very loaded machine): the create may
        # have completed before the held-back Ctrl-C was raised; remove it, try again.
        region = None
        gc.collect()
        if name in [listed.name for listed in mshare.list()]:
            mshare.unlink(name)
    else:
        pytest.fail("the SIGINT never landed while the region was being reserved")
    assert region is None, "the create ran to the end despite Ctrl-C during its reservation"
    assert [listed.name for listed in mshare.list()] == []
    assert shm_objects_of(registry_id) == []
