"""What one attach costs the system, counted: the files it opens and the locks it takes.

Counted with an audit hook (``open`` and ``fcntl.flock`` events; the compiled core raises
``open`` for the files it opens, as ``os.open`` does) in a fresh interpreter, so no other
test pays for the hook. Counts, unlike times, are exact: one more stat-like step or lock
on the attach path turns these tests red.
"""

import json
import os

import pytest

import mshare
from helpers import run_python

COUNT_ONE_ATTACH = """
    import json, os, sys
    import mshare
    mshare.attach({name!r}).close()  # the first attach imports what it imports lazily
    held = mshare.attach({name!r}) if {already_mapped} else None
    events = []

    def hook(event, arguments):
        if event == "open":
            events.append(["open", os.fsdecode(arguments[0])])
        elif event == "fcntl.flock":
            events.append(["flock", arguments[1]])

    sys.addaudithook(hook)
    region = mshare.attach({name!r}, readonly={readonly})
    of_the_attach = list(events)
    region.close()
    print(json.dumps(of_the_attach))
"""


def events_of_one_attach(name, readonly=False, already_mapped=False):
    """``["open", path]`` and ``["flock", operation]`` of one attach of ``name``."""
    with mshare.create(name, 1 << 20, hugepages="off"):
        pass
    try:
        code = COUNT_ONE_ATTACH.format(name=name, readonly=readonly, already_mapped=already_mapped)
        return json.loads(run_python(code).stdout)
    finally:
        mshare.unlink(name)


@pytest.mark.parametrize("readonly", [False, True])
def test_attach_opens_four_files_and_takes_one_lock(registry_path, name, readonly):
    events = events_of_one_attach(name, readonly)
    opened = [event[1] for event in events if event[0] == "open"]
    # The registry directory, the entry, the data object, the range file (the attach
    # mark): no registry lock file, no mshare_info, nothing opened twice.
    assert len(opened) == 4, events
    assert opened[0] == registry_path
    assert opened[1] == name
    assert os.path.basename(opened[2]).startswith("mshare-")
    assert opened[3].startswith(".range-")
    assert [event[0] for event in events].count("flock") == 1, events  # the mark alone


def test_attach_of_a_region_mapped_here_takes_no_mark(registry_path, name):
    """A region this process maps already is shared: no range file, no lock."""
    events = events_of_one_attach(name, already_mapped=True)
    opened = [event[1] for event in events if event[0] == "open"]
    assert len(opened) == 3, events
    assert opened[:2] == [registry_path, name]
    assert os.path.basename(opened[2]).startswith("mshare-")
    assert "flock" not in [event[0] for event in events], events
