"""A benchmark child: a new interpreter that attaches one region and does what its parent says.

Run as `python -m bench.child '{"backend": ..., "name": ...}'`. It imports everything
first, says `ready`, then answers one JSON line per command read from stdin:

- `attach`: attach the region and touch every page; the times are taken here, inside
  the child, so process start-up and the pipe never count;
- `map`: attach without touching (the scan then meets every page fault itself);
- `scan`: sum the region as float64 (the parallel-scan figure);
- `close`: unmap it again (so a fleet can be measured again, mapping nothing);
- `exit` (or end of input): close and leave.
"""

from __future__ import annotations

import json
import os
import sys
import time

from bench.backends import by_name, touch
from bench.machine import vmpte_kib


def reply(**fields) -> None:
    fields["pid"] = os.getpid()
    fields["vmpte_kib"] = vmpte_kib()
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main() -> None:
    spec = json.loads(sys.argv[1])
    backend = by_name(spec["backend"])
    backend.load()
    handle = None
    reply(event="ready")
    for line in sys.stdin:
        command = line.strip()
        if command in ("attach", "map"):
            started = time.perf_counter()
            handle = backend.attach(spec["name"])
            attached = time.perf_counter()
            page_size = handle.page_size  # untimed: a diagnostic users do not call
            touch_started = time.perf_counter()
            pages = touch(handle) if command == "attach" else 0
            touched = time.perf_counter()
            reply(event="attached", attach_s=attached - started, touch_s=touched - touch_started,
                  total_s=attached - started + touched - touch_started, pages=pages,
                  page_size=page_size, addr=handle.addr)
        elif command == "scan":
            values = handle.array("float64")
            started = time.perf_counter()
            total = float(values.sum())
            seconds = time.perf_counter() - started
            del values
            reply(event="scanned", scan_s=seconds, bytes=len(handle.buf), checksum=total)
        elif command == "close":
            handle.close()
            handle = None
            reply(event="closed")
        elif command == "exit":
            break
        else:
            raise SystemExit(f"bench.child: unknown command {command!r}")
    if handle is not None:
        handle.close()


if __name__ == "__main__":
    main()
