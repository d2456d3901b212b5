"""What a registry holds, and child processes that die at a chosen step."""

import os
import signal

from consistency import OWN_FILES, data_objects
from helpers import run_python
from mshare.registry import Registry


def state(registry_path):
    """``(registry files, data objects)`` of this registry, its lock and info file aside."""
    with Registry(registry_path) as registry:
        objects = sorted(data_objects(registry.registry_id))
    return sorted(set(os.listdir(registry_path)) - OWN_FILES), objects


def crash(code, step, **user):
    """Run ``code`` in a child that kills itself (SIGKILL) at the fault step ``step``."""
    result = run_python(code, check=False, env=dict(os.environ, MSHARE_FAULT=step), **user)
    assert result.returncode == -signal.SIGKILL, (
        f"the child was to die at {step} but exited {result.returncode}\n{result.stderr}"
    )
