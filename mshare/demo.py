"""``mshare demo``: what mshare is for, measured on this machine in under a minute.

One region (about 1 GiB, less where memory is short) is made resident, and its creator
stores in it a pointer to a message it wrote there; N worker processes, each a new
interpreter, attach it one after the other, follow the pointer, and read one byte in every
page. Then the same with ``multiprocessing.shared_memory``. The table compares, per
worker, the time to attach and touch every page and the page-table memory that costs the
machine (system-wide ``PageTables``, minus the same workers mapping nothing), whether every
worker saw the region at the same address, and whether the pointer led to the message.
On a machine without huge pages it ends with what the table would show with them, from
the page sizes the machine has, and the one command that enables them.

Nothing is left behind: regions are unlinked and workers stopped on every way out,
Ctrl-C and SIGTERM included.
"""

import argparse
import contextlib
import ctypes
import inspect
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import resource_tracker, shared_memory
from types import FrameType
from typing import (Any, Callable, Dict, Final, Iterator, List, Mapping, Optional, Sequence,
                    TypedDict, Union)

import mshare
from mshare.backends.files import Unavailable
from mshare.backends.selection import candidates
from mshare.machine import settle_counters
from mshare.operations import bookkeeping_length
from mshare.registry_root import SHM_DIRECTORY
from mshare.units import format_size, size_argument

GiB: Final = 1 << 30
MiB: Final = 1 << 20
HUGEPAGE_CHOICES: Final = ("auto", "hugetlb", "thp", "off")
HELD_SIGNALS: Final = {signal.SIGINT, signal.SIGTERM}
WHAT_IT_BUYS: Final = ("A fixed address means that a pointer one process stores in a region is valid in "
                "every process that attaches it: structures inside need no offsets and no copies.")
# The creator's pointer sits after the 8-byte marker; the message it points to, mid-region.
POINTER_OFFSET: Final = 8
MESSAGE: Final = b"reached through the creator's pointer".ljust(48, b"\0")


class Row(TypedDict):
    """One contender's line in the table: what ``measure`` found."""

    label: str
    backend: str
    page_size: int
    seconds: float
    pagetables_kib: float
    same_address: bool
    pointer_followed: bool


# What a worker reports as one line of JSON.
Report = Dict[str, Any]


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM for a moment: they take effect once the block is left."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


@contextlib.contextmanager
def registry_of_its_own() -> Iterator[None]:
    """The demo's regions in a registry of its own, on the default registry's file system,
    removed afterwards: the demo leaves nothing in the user's registry, not even the
    address index its first region would make there. An ``MSHARE_ROOT`` the user set is
    theirs, and is used as it is."""
    if os.environ.get("MSHARE_ROOT"):
        yield
        return
    with signals_held():  # made and named, or neither
        root = tempfile.mkdtemp(prefix="mshare-demo-", dir=SHM_DIRECTORY)
        os.environ["MSHARE_ROOT"] = root  # the workers inherit it
    try:
        yield
    finally:
        with signals_held():
            del os.environ["MSHARE_ROOT"]
            shutil.rmtree(root, ignore_errors=True)


# -- sizes and kernel counters ------------------------------------------------------------

def _meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as lines:
        for line in lines:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def default_size() -> int:
    """About 1 GiB; less when free memory or /dev/shm space is short (both must hold it)."""
    available = _meminfo_kib("MemAvailable") * 1024
    shm = os.statvfs("/dev/shm")
    room = min(GiB, available // 8, shm.f_bavail * shm.f_frsize // 4)
    return max(64 * MiB, room // (64 * MiB) * (64 * MiB))


def pagetables_kib() -> int:
    """System-wide page-table memory, once the kernel has folded its per-CPU counters."""
    if not settle_counters():
        # Only root may ask for the fold; everyone else waits one folding interval.
        time.sleep(1.5)
    return _meminfo_kib("PageTables")


# -- the worker: a new interpreter -----------------------------------------------------------

def _attach_shared_memory(name: str) -> shared_memory.SharedMemory:
    # The resource tracker would unlink the block when this worker exits (gh-82300).
    register = resource_tracker.register
    resource_tracker.register = lambda *args: None
    try:
        return shared_memory.SharedMemory(name)
    finally:
        resource_tracker.register = register


def worker() -> None:
    """Wait for "go", attach, read a byte of every page, report; leave on "exit" or EOF."""
    kind, name = sys.argv[1], sys.argv[2]
    # The parent stops its workers itself. A Ctrl-C that reached this process before it
    # left the parent's process group waits here, held (the mask survives exec): drop it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    started = time.perf_counter()
    handle: Union[mshare.Region, shared_memory.SharedMemory]
    if kind == "mshare":
        handle = mshare.attach(name)
        buf, page_size = handle.buf, handle.page_size
    else:
        handle = _attach_shared_memory(name)
        buf, page_size = handle.buf, os.sysconf("SC_PAGE_SIZE")
    followed = follow_pointer(buf)
    pages = len(bytes(buf[::page_size]))
    seconds = time.perf_counter() - started
    report = {"seconds": seconds, "pages": pages, "addr": _address_of(buf),
              "marker": bytes(buf[:8]).hex(), "followed": followed}
    print(json.dumps(report), flush=True)
    sys.stdin.readline()
    del buf
    handle.close()


def _address_of(buf: memoryview) -> int:
    # The ctypes view goes on return, so it never keeps the mapping from closing.
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def store_pointer(buf: memoryview) -> None:
    """Write MESSAGE mid-region and, after the marker, its address in this process."""
    offset = len(buf) // 2 // 8 * 8
    buf[offset:offset + len(MESSAGE)] = MESSAGE
    pointer = _address_of(buf) + offset
    buf[POINTER_OFFSET:POINTER_OFFSET + 8] = pointer.to_bytes(8, "little")


def follow_pointer(buf: memoryview) -> Optional[str]:
    """The text the stored pointer leads to, or None where it points outside this mapping.

    The pointer is read once and followed only if the whole message lies inside this
    process's own mapping: another process wrote it, so it is checked like input.
    """
    pointer = int.from_bytes(bytes(buf[POINTER_OFFSET:POINTER_OFFSET + 8]), "little")
    start = _address_of(buf)
    if not start <= pointer <= start + len(buf) - len(MESSAGE):
        return None
    return ctypes.string_at(pointer, len(MESSAGE)).rstrip(b"\0").decode(errors="replace")


class Workers:
    """N worker processes; stopping them is safe to call at any point, more than once."""

    def __init__(self) -> None:
        self.processes: List[subprocess.Popen[str]] = []

    def start(self, count: int, kind: str, name: str) -> None:
        """Start ``count`` workers that will attach the ``kind`` region ``name``; return
        once every one is ready."""
        code = "from mshare.demo import worker; worker()"
        # Workers import this very mshare, and start from "/" so that a source checkout
        # in the working directory (where `pip install .` was run) never shadows it.
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths = [package_parent] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
        for _ in range(count):
            # A session of their own: a Ctrl-C at the terminal reaches only the parent,
            # which then stops them in order instead of racing their tracebacks. Signals
            # are held until the worker is on the list, so none is ever lost track of.
            with signals_held():
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-c", code, kind, name], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, text=True, start_new_session=True,
                    cwd="/", env=environment))
        for process in self.processes:
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"worker {process.pid} failed to start")

    def attach_one_by_one(self, progress: Callable[[int], None]) -> List[Report]:
        """Let each worker attach in turn; ``progress`` hears how many have reported."""
        reports = []
        for index, process in enumerate(self.processes, 1):
            process.stdin.write("go\n")
            process.stdin.flush()
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {process.pid} died (exit code {process.poll()})")
            reports.append(json.loads(line))
            progress(index)
        return reports

    def stop(self) -> None:
        """Tell every worker to leave, wait for it (kill it if it hangs), and forget it."""
        for process in self.processes:
            try:
                process.stdin.close()  # EOF: the worker closes its mapping and exits
            except OSError:
                pass
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
        self.processes = []


# -- one contender ----------------------------------------------------------------------------

class MshareContender:
    """An mshare region, created with the ``hugepages`` choice asked for."""

    label: Final = "mshare"

    def __init__(self, name: str, size: int, hugepages: str) -> None:
        options: Dict[str, Any] = {}
        if "hugepages" in _create_parameters():
            options["hugepages"] = hugepages
        elif hugepages in ("hugetlb", "thp"):
            raise mshare.MshareError(f"this mshare has no {hugepages} backend; "
                                     "use --hugepages auto or off")
        self.name: str = name
        self.region: mshare.Region = mshare.create(name, size, **options)
        self.backend: str = self.region.backend
        self.page_size: int = self.region.page_size

    def make_resident(self) -> None:
        """Fault every page in, write a fresh marker and the pointer to the message."""
        self.region.populate()
        self.region.buf[:8] = secrets.token_bytes(8)
        store_pointer(self.region.buf)

    @property
    def marker(self) -> str:
        """The marker the creator wrote, as hex: what every worker must read back."""
        return bytes(self.region.buf[:8]).hex()

    def remove(self) -> None:
        """Close and unlink the region."""
        self.region.close()
        mshare.unlink(self.name)


class SharedMemoryContender:
    """A ``multiprocessing.shared_memory`` block of the same size: the peer."""

    label: Final = "shared_memory"
    backend: Final = "shm"

    def __init__(self, name: str, size: int) -> None:
        self.name: str = name
        self.block: shared_memory.SharedMemory = shared_memory.SharedMemory(name, create=True, size=size)
        self.page_size: int = os.sysconf("SC_PAGE_SIZE")

    def make_resident(self) -> None:
        """Fault every page in, write a fresh marker and the pointer to the message."""
        # A byte written in every page makes the block resident, as mshare's populate does.
        pages = len(range(0, len(self.block.buf), self.page_size))
        self.block.buf[::self.page_size] = bytes(pages)
        self.block.buf[:8] = secrets.token_bytes(8)
        store_pointer(self.block.buf)

    @property
    def marker(self) -> str:
        """The marker the creator wrote, as hex: what every worker must read back."""
        return bytes(self.block.buf[:8]).hex()

    def remove(self) -> None:
        """Close and unlink the block."""
        self.block.close()
        self.block.unlink()


Contender = Union[MshareContender, SharedMemoryContender]


def _create_parameters() -> Mapping[str, inspect.Parameter]:
    return inspect.signature(mshare.create).parameters


def measure(contender: Contender, workers: Workers, count: int, say: Callable[[str], None]) -> Row:
    """Attach `count` workers to the contender's region; per-worker time and page tables."""
    kind = "mshare" if contender.label == "mshare" else "shared_memory"
    say(f"  starting {count} workers...")
    workers.start(count, kind, contender.name)
    # The counter is system-wide, so other programs move it too. Where reading it is cheap
    # (root), read it after every worker and take the median step, which one burst of
    # someone else's activity cannot move; elsewhere read it once before and once after.
    exact = settle_counters()
    samples = [pagetables_kib()]

    def attached(done: int) -> None:
        if exact:
            samples.append(pagetables_kib())
        say(f"  worker {done}/{count} attached and read every page")

    reports = workers.attach_one_by_one(attached)
    if exact:
        pagetables_per_worker = statistics.median(b - a for a, b in zip(samples, samples[1:]))
    else:
        pagetables_per_worker = (pagetables_kib() - samples[0]) / count
    workers.stop()
    if any(report["marker"] != contender.marker for report in reports):
        raise RuntimeError(f"a worker did not read what the creator wrote in {contender.name}")
    return {
        "label": contender.label, "backend": contender.backend,
        "page_size": contender.page_size,
        "seconds": statistics.median(report["seconds"] for report in reports),
        "pagetables_kib": pagetables_per_worker,
        "same_address": len({report["addr"] for report in reports}) == 1,
        "pointer_followed": all(report["followed"] == MESSAGE.rstrip(b"\0").decode()
                                for report in reports),
    }


# -- the report -------------------------------------------------------------------------------

def table(rows: Sequence[Row], count: int) -> List[str]:
    """The comparison table, mshare's row first, and the ratios shared_memory / mshare."""
    ours, theirs = rows
    lines = [f"{'':<15}{'backend':<9}{'page size':>10}{'attach+touch/worker':>22}"
             f"{'page tables/worker':>21}{'same address':>14}{'pointer works':>15}"]
    for row in rows:
        lines.append(f"{row['label']:<15}{row['backend']:<9}{format_size(row['page_size']):>10}"
                     f"{row['seconds'] * 1e3:>19.1f} ms{row['pagetables_kib']:>17,.0f} KiB"
                     f"{_yes(row['same_address']):>14}{_yes(row['pointer_followed']):>15}")
    speed = theirs["seconds"] / ours["seconds"]
    # The counter moves in 4 KiB pages: below one page over all workers the ratio is a bound.
    resolution = 4 / count
    if ours["pagetables_kib"] < resolution:
        tables = f">= {theirs['pagetables_kib'] / resolution:,.0f}x"
    else:
        tables = f"{theirs['pagetables_kib'] / ours['pagetables_kib']:,.1f}x"
    lines.append(f"{'shared_memory / mshare':<34}{speed:>21.1f}x{tables:>21}")
    return lines


def pointer_story(rows: Sequence[Row]) -> List[str]:
    """What became of the creator's pointer in each contender's workers."""
    ours, theirs = rows
    outcome = ("followed it to the message" if ours["pointer_followed"]
               else "did NOT find the message")
    story = [f"The creator stored the address of a message in the region; every mshare worker "
             f"{outcome}."]
    if not theirs["pointer_followed"]:
        story.append("In shared_memory's workers the block sits elsewhere, so the same number "
                     "points outside it: such structures must store offsets instead.")
    return story


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _mshare_command() -> str:
    """The mshare being run, spelled so that sudo and a shell in any directory find it."""
    script = os.path.join(os.path.dirname(sys.executable), "mshare")
    return script if os.access(script, os.X_OK) else f"{sys.executable} -m mshare"


def huge_page_size() -> Optional[int]:
    """The machine's default huge page size in bytes, or None if its kernel has none."""
    try:
        return _meminfo_kib("Hugepagesize") * 1024
    except KeyError:
        return None


def with_huge_pages(row: Row, size: int, huge_page: int) -> List[str]:
    """What the mshare row would show with huge pages of `huge_page` bytes: page tables per
    worker, worked out as the kernel lays them out."""
    # One 4 KiB page-table page maps 1 GiB with 2 MiB pages. The region starts on a GiB, so
    # with hugetlb every whole GiB's table is shared and only the last, partial one (the
    # bookkeeping after the bytes always makes one) is each worker's own; with thp every
    # GiB the mapping touches has a table per worker.
    gibs = size // GiB + 1
    fewer_faults = max(1, huge_page // row["page_size"])
    return [
        f"  hugetlb  {format_size(huge_page)} pages: page tables ~4 KiB per worker instead of "
        f"{row['pagetables_kib']:,.0f} KiB (the whole GiBs' tables shared between processes), "
        f"{fewer_faults}x fewer page faults to attach and touch",
        f"  thp      {format_size(huge_page)} pages: page tables ~{4 * gibs} KiB per worker, "
        f"{fewer_faults}x fewer page faults",
    ]


def advice(row: Row, size: int) -> List[str]:
    """What mshare's backend bought here and, without huge pages, how to get them."""
    if row["backend"] == "hugetlb":
        return ["mshare used hugetlbfs: the workers share its page tables, and a new process "
                "has the whole region usable in milliseconds."]
    mshare_command = _mshare_command()
    if row["backend"] == "thp":
        lines = ["mshare used transparent huge pages: page tables ~512x smaller.",
                 "hugetlbfs would share them between processes outright (~4 KiB per worker)."]
    else:
        lines = [f"mshare used {row['backend']} with {format_size(row['page_size'])} pages, "
                 "so it costs what shared_memory costs."]
        huge_page = huge_page_size()
        if huge_page:
            lines += ["With huge pages this machine's table would show:"]
            lines += with_huge_pages(row, size, huge_page)
    # mshare doctor's view of the machine: why each huge-page backend is out, and the fix.
    missing = [(kind, choice) for kind, choice in candidates(size, bookkeeping_length)
               if isinstance(choice, Unavailable)]
    if not missing:
        return lines + [f"Huge pages are set up here: {mshare_command} demo --hugepages auto "
                        "uses them."]
    lines += ["Not here: " + "; ".join(f"{kind}: {choice.reason}" for kind, choice in missing)
              + f" ({mshare_command} doctor says more)."]
    # A fix reads "mshare mount ... (or: the same by hand)": the first is the one command.
    mounts = [choice.fix.split(" (or:")[0].removeprefix("mshare ") for _, choice in missing
              if choice.fix.startswith("mshare mount")]
    if mounts:
        lines += [f"One command enables them, as root: sudo {mshare_command} {mounts[0]}",
                  f"then: {mshare_command} demo --hugepages hugetlb"]
    return lines


# -- the command ------------------------------------------------------------------------------

def _workers(text: str) -> int:
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError("--workers must be at least 1")
    return count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, on ``parser``."""
    parser.add_argument("--size", type=size_argument, default=None,
                        help="region size, e.g. 256M, 1G (default: about 1G, less if memory is short)")
    parser.add_argument("--workers", type=_workers, default=max(4, os.cpu_count() or 1),
                        help="worker processes (default: CPUs, at least 4)")
    parser.add_argument("--hugepages", choices=HUGEPAGE_CHOICES, default="auto",
                        help="mshare's backend choice (default auto: the best available)")


def _raise_on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed `args` (size, workers, hugepages); return the exit code."""
    size = args.size or default_size()
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(f"mshare demo: a {format_size(size)} region, {args.workers} workers, "
        f"hugepages={args.hugepages} (this machine: {os.cpu_count()} CPUs, "
        f"{format_size(_meminfo_kib('MemAvailable') * 1024)} available)")
    say(WHAT_IT_BUYS)
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    workers = Workers()
    contenders: List[Contender] = []
    rows: List[Row] = []
    with registry_of_its_own():
        try:
            makers: Sequence[Callable[[], Contender]] = (
                lambda: MshareContender(f"demo-{tag}", size, args.hugepages),
                lambda: SharedMemoryContender(f"mshare-demo-{tag}", size))
            for step, make in enumerate(makers, 1):
                started = time.perf_counter()
                with signals_held():  # created and listed for removal, or neither
                    contenders.append(make())
                contender = contenders[-1]
                contender.make_resident()
                say(f"[{step}/2] {contender.label}: region {contender.name} "
                    f"({contender.backend}, {format_size(contender.page_size)} pages) created and "
                    f"resident in {time.perf_counter() - started:.2f} s")
                rows.append(measure(contender, workers, args.workers, say))
                with signals_held():
                    contenders.pop().remove()
        finally:
            # A second Ctrl-C must not cut the cleanup short; it takes effect afterwards.
            with signals_held():
                workers.stop()
                while contenders:
                    contenders.pop().remove()
            signal.signal(signal.SIGTERM, previous_sigterm)
    say("")
    for line in table(rows, args.workers) + [""] + pointer_story(rows) + [""] + advice(rows[0], size):
        say(line)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m mshare.demo``: parse ``argv``, run the demo, return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m mshare.demo", description=__doc__.split("\n")[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except KeyboardInterrupt:
        print("mshare demo: interrupted; everything it made is gone", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
