"""Steps that used to repeat inside one call, counted: the swaps of the ``SIGINT`` handler
that hold Ctrl-C back (two system calls each) and the checks of the mount table (a
``stat`` of the mount namespace and a ``poll`` each).

Counted with a profile hook in a fresh interpreter: it sees every call of the C function
``_signal.signal`` and of ``_MountTable.current``, whoever makes it.
"""

import json

import pytest

from helpers import run_python

COUNT_ONE_CALL = """
    import json, signal, sys, _signal
    import mshare
    from mshare import machine

    def swap_on_ctrl_c(handler, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, swap_on_ctrl_c)  # a Python handler, as by default
    mshare.create({name!r}, 2 << 20, hugepages={hugepages!r}).close()  # lazy imports
    mshare.attach({name!r}).close()
    mshare.unlink({name!r})
    counts = {{"handler swaps": 0, "mount table checks": 0}}
    checking = machine._MountTable.current.__code__

    def profile(frame, event, argument):
        if event == "c_call" and argument is _signal.signal:
            counts["handler swaps"] += 1
        elif event == "call" and frame.f_code is checking:
            counts["mount table checks"] += 1

    def counted(operation):
        for key in counts:
            counts[key] = 0
        sys.setprofile(profile)
        try:
            operation()
        finally:
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
