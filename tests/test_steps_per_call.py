"""Steps that used to repeat inside one call, counted: the swaps of the ``SIGINT`` handler
that hold Ctrl-C back (two system calls each), the checks of the mount table (a ``stat``
of the mount namespace and a ``poll`` each), and per ``create`` and ``unlink`` the files
opened, the address index's writes, the directory listings and the ``stat``s.

Counted with a profile hook in a fresh interpreter: it sees every call of the C functions
``_signal.signal``, ``os.open``, ``open``, ``os.listdir`` and the ``stat`` family, and of
``_MountTable.current``, ``open_descriptor`` and the index's file write, whoever makes it.
"""

import json

import pytest

from helpers import run_python

COUNT_ONE_CALL = """
    import json, os, signal, sys, _signal
    import mshare
    from mshare import machine
    from mshare.address_index import AddressIndex

    def swap_on_ctrl_c(handler, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, swap_on_ctrl_c)  # a Python handler, as by default
    # A neighbour keeps the address index in place, as in any registry in use.
    mshare.create("neighbour", 2 << 20, hugepages={hugepages!r}).close()
    mshare.create({name!r}, 2 << 20, hugepages={hugepages!r}).close()  # lazy imports
    mshare.attach({name!r}).close()
    mshare.unlink({name!r})
    checking = machine._MountTable.current.__code__
    writing = AddressIndex._write_file.__code__
    stats = (os.stat, os.fstat, os.statvfs, os.fstatvfs)
    counts = {{"handler swaps": 0, "mount table checks": 0, "files opened": 0,
              "index writes": 0, "listings": 0, "stats": 0}}

    counting = []

    # Every open raises the "open" audit event, those of the compiled core included.
    def audit(event, arguments):
        if counting and event == "open":
            counts["files opened"] += 1

    sys.addaudithook(audit)

    def profile(frame, event, argument):
        if event == "c_call":
            if argument is _signal.signal:
                counts["handler swaps"] += 1
            elif argument is os.listdir:
                counts["listings"] += 1
            elif argument in stats:
                counts["stats"] += 1
        elif event == "call":
            if frame.f_code is checking:
                counts["mount table checks"] += 1
            elif frame.f_code is writing:
                counts["index writes"] += 1

    def counted(operation):
        for key in counts:
            counts[key] = 0
        sys.setprofile(profile)
        counting.append(True)
        try:
            operation()
        finally:
            counting.clear()
            sys.setprofile(None)
        return dict(counts)

    found = {{}}
    region = None

    def create():
        global region
        region = mshare.create({name!r}, 2 << 20, hugepages={hugepages!r})

    found["create"] = counted(create)
    backend = region.backend
    region.close()
    found["attach"] = counted(lambda: mshare.attach({name!r}).close())
    found["unlink"] = counted(lambda: mshare.unlink({name!r}))
    mshare.unlink("neighbour")
    print(json.dumps([backend, found]))
"""


def steps_of_each_call(name, hugepages):
    """The backend the region got, and the counts of each call of a create, an attach
    and an unlink of it."""
    code = COUNT_ONE_CALL.format(name=name, hugepages=hugepages)
    return json.loads(run_python(code).stdout)


@pytest.mark.parametrize("hugepages", ["off", "auto"])
def test_create_holds_ctrl_c_back_once_and_attach_not_at_all(registry_path, name, hugepages):
    _backend, found = steps_of_each_call(name, hugepages)
    # One deferral around the whole of create's making: set, then restored.
    assert found["create"]["handler swaps"] == 2, found
    assert found["attach"]["handler swaps"] == 0, found


@pytest.mark.parametrize("hugepages", ["off", "auto"])
def test_each_call_checks_the_mount_table_once(registry_path, name, hugepages):
    backend, found = steps_of_each_call(name, hugepages)
    # Once per call at most, and not at all where no mount is looked up (a shm region's
    # attach); before, once per lookup: a huge-page attach checked twice.
    assert all(found[call]["mount table checks"] <= 1 for call in found), found
    assert found["attach"]["mount table checks"] == (backend != "shm"), (backend, found)


# What each call must do, and no more: a step put back (a second open of a file the call
# already holds, another index write, a stat already made) turns these red.
CREATE_STEPS = {
    # registry directory, the directory again for its lock, index directory, this user's
    # index file (read and then written through the same descriptor), range file (kept
    # as the attach mark), data object, entry
    "files opened": 7,
    # the range's bits before its range file exists; the stamp once the entry is linked
    "index writes": 2,
    "listings": 1,  # the index directory
    # registry directory as opened (its lock is the directory itself: no stat); the
    # registry's stamp at load, at each index write and at the lock's release; the index
    # file as read; the name checked free; the index directory's sticky bit; the data
    # object as made; /dev/shm's free space; the entry as written
    "stats": 11,
    "handler swaps": 2,  # Ctrl-C held back once
}
UNLINK_STEPS = {
    # registry directory, the directory again for its lock, index directory, index file,
    # entry, range file (read once, to check it is the entry's and to release it)
    "files opened": 6,
    "index writes": 1,
    "listings": 1,
    # registry directory, stamp at load, index file, data object before removal and
    # after, range file as opened, index directory's sticky bit, stamp at the write and at
    # the lock's release (stats are counted where Python makes them: the entry's is
    # inside the compiled read)
    "stats": 9,
    "handler swaps": 2,
}
# What a hugetlb create does besides: the pool's five counters, and a statfs of the mount
# instead of /dev/shm's; its mount-namespace check is a readlink, no stat. Its
# reservation costs no step: the mapping makes it.
HUGETLB_EXTRA = {"create": {"files opened": 5}, "unlink": {}}


def only(found, calls, keys):
    """The counts of ``keys`` for each of ``calls``."""
    return {call: {key: found[call][key] for key in keys} for call in calls}


def test_a_shm_create_and_unlink_take_only_their_own_steps(registry_path, name):
    _backend, found = steps_of_each_call(name, "off")
    found = only(found, ("create", "unlink"), CREATE_STEPS)
    assert found == {"create": CREATE_STEPS, "unlink": UNLINK_STEPS}, json.dumps(found)


def test_a_hugetlb_create_adds_only_the_pool_check(registry_path, name, hugetlbfs):
    backend, found = steps_of_each_call(name, "hugetlb")
    found = only(found, ("create", "unlink"), CREATE_STEPS)
    expected = {call: {key: steps[key] + HUGETLB_EXTRA[call].get(key, 0) for key in steps}
                for call, steps in (("create", CREATE_STEPS), ("unlink", UNLINK_STEPS))}
    assert (backend, found) == ("hugetlb", expected), json.dumps(found)
