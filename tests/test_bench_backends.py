"""The benchmark suite times what a user's call does and nothing more: the page size a
handle reports (read from /proc/self/smaps, a diagnostic no user's attach pays) is read
only when asked for, never inside a timed create or attach, for every backend the suite
measures, the drop-in included."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent

# Run from "/" and import mshare before the checkout joins sys.path (for `bench`), so the
# installed package is the one measured and an unbuilt source tree never shadows it.
CHILD = """
import json, sys
import mshare
sys.path.append(sys.argv.pop(1))
from bench.backends import DROP_IN, by_name

smaps_opened = []
reading = [False]

def hook(event, args):
    path = str(args[0]) if event == "open" else ""
    if reading[0] and path.startswith("/proc/") and "smaps" in path:
        smaps_opened.append(path)

sys.addaudithook(hook)
found = {}
for name in sys.argv[1:]:
    backend = by_name(name)
    backend.load()
    region = name.replace(".", "-") + "-page-size-probe"
    reading[0] = True
    creator = backend.create(region, 1 << 20)
    creator.close()
    attached = backend.attach(region)
    during_calls = len(smaps_opened)
    page_size = attached.page_size
    found[name] = {"during_calls": during_calls,
                   "when_asked": len(smaps_opened) - during_calls, "page_size": page_size}
    reading[0] = False
    smaps_opened.clear()
    attached.close()
    backend.unlink(region)
print(json.dumps(found))
"""


@pytest.mark.parametrize("backend", ["mshare-shm", "mshare.shared_memory"])
def test_no_timed_call_reads_the_page_size(backend, registry_path):
    run = subprocess.run([sys.executable, "-c", CHILD, str(REPOSITORY), backend], cwd="/",
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.strip().splitlines()[-1])[backend]
    assert found["during_calls"] == 0, found
    # The hook does see the read, once the page size is asked for.
    assert found["when_asked"] >= 1, found
    assert found["page_size"] >= 4096, found
