"""How much the reliability tests do, and the figures they report.

``MSHARE_TEST_SCALE`` multiplies every iteration count and duration (default 1, which
keeps the whole reliability suite to a few minutes on two cores). With
``MSHARE_FIGURES=PATH`` each test appends what it measured to PATH as a JSON line; the
numbers in docs/reliability.md come from such a run.
"""

import json
import os

SCALE = float(os.environ.get("MSHARE_TEST_SCALE", "1"))


def scaled(count):
    """``count`` iterations (or seconds) times the scale, at least 1."""
    return max(1, round(count * SCALE))


def record(topic, **numbers):
    path = os.environ.get("MSHARE_FIGURES")
    if path:
        with open(path, "a") as output:
            output.write(json.dumps({"topic": topic, **numbers}) + "\n")
