"""On CI (``MSHARE_CI=1``) a skipped test is a failed test, unless ``allowed_skips.txt``
lists it with the reason it may skip there.

A skip that nobody looks at hides a regression as well as a green run would; CI runs as
root with huge pages set up, so almost everything can run, and what cannot says why in
one reviewed file.
"""

import os
import re

import pytest

ALLOWED_SKIPS = os.path.join(os.path.dirname(__file__), "allowed_skips.txt")


def on_ci():
    return os.environ.get("MSHARE_CI") == "1"


def allowed_skips(path=ALLOWED_SKIPS):
    """``{test id pattern: reason}`` from the file; a line without a reason is an error."""
    allowed = {}
    with open(path) as listing:
        for number, line in enumerate(listing, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            pattern, separator, reason = (part.strip() for part in line.partition(" -- "))
            if not separator or not reason:
                raise ValueError(f"{path}:{number}: expected 'TEST-ID-PATTERN -- REASON', got {line!r}")
            allowed[pattern] = reason
    return allowed


def skip_allowed(nodeid, allowed):
    """Whether a pattern matches the test id; ``*`` is the only wildcard, because test
    ids are full of the brackets that shell patterns would read as character sets."""
    return any(re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), nodeid)
               for pattern in allowed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (on_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    if skip_allowed(item.nodeid, allowed_skips()):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"skipped on CI, and {os.path.basename(ALLOWED_SKIPS)} does not allow it: "
                       f"{reason}")
