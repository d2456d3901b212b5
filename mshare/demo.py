"""``mshare demo``: worker processes attach one region at one address and share its data."""

import multiprocessing
import os

import mshare
from mshare.units import format_size, parse_size


def add_arguments(parser):
    parser.add_argument("--size", type=parse_size, default=64 << 20, help="region size (default 64M)")
    parser.add_argument("--workers", type=int, default=max(4, os.cpu_count() or 1),
                        help="worker processes (default: CPUs, at least 4)")


def _worker(region, slot):
    # The Region arrives pickled: unpickling attaches it by name, at the same address.
    with region:
        region.buf[slot * 8:(slot + 1) * 8] = os.getpid().to_bytes(8, "little")
        return region.addr, os.getpid()


def run(args):
    name = f"mshare-demo-{os.getpid()}"
    region = mshare.create(name, args.size)
    try:
        print(f"created {name}: {format_size(region.size)} at {region.addr:#x} ({region.backend})")
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.workers) as pool:
            results = pool.starmap(_worker, [(region, slot) for slot in range(args.workers)])
        for slot, (addr, pid) in enumerate(results):
            written = int.from_bytes(region.buf[slot * 8:(slot + 1) * 8], "little")
            same = "same address" if addr == region.addr else "DIFFERENT ADDRESS"
            print(f"worker {pid}: attached at {addr:#x} ({same}); wrote its pid, parent reads {written}")
        ok = all(addr == region.addr for addr, _ in results)
        print("every worker saw the region at the same address" if ok else "address mismatch")
        return 0 if ok else 1
    finally:
        region.close()
        mshare.unlink(name)
