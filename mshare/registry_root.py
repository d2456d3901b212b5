"""Which registry a process uses when ``MSHARE_ROOT`` is unset.

The shared registry, ``/dev/shm/mshare``, is where users see each other's regions. If the
first user to run mshare made it, that user would own it and could delete everyone's
entries (the registry refuses such a directory), so it would be theirs alone. Instead:

- root uses the shared registry, and creates it (root-owned, mode 1777) when missing;
- any other user uses it once root has made it: a directory owned by root;
- until then (or if someone else made it) each user gets a private registry,
  ``/dev/shm/mshare-UID``, created mode 0700.

Setting ``MSHARE_ROOT`` overrides all of this.
"""

import contextlib
import os
import stat

# Where the registries live; tests point it at a directory of their own.
SHM_DIRECTORY = "/dev/shm"
SHARED_NAME = "mshare"


def shared_root() -> str:
    """The registry every user shares once root has made it."""
    return os.path.join(SHM_DIRECTORY, SHARED_NAME)


def private_root(uid: int) -> str:
    """The registry of user ``uid`` alone, used while there is no shared one."""
    return os.path.join(SHM_DIRECTORY, f"{SHARED_NAME}-{uid}")


def default_root(*, make: bool = True) -> str:
    """The registry directory to use without ``MSHARE_ROOT``; a private one is created
    (mode 0700) when it is chosen and missing, unless ``make`` is false (a diagnostic that
    only names it must leave nothing in /dev/shm)."""
    user = os.geteuid()
    shared = shared_root()
    if user == 0 or _made_by_root(shared):
        return shared
    private = private_root(user)
    if not make:
        return private
    # An existing one may be another user's: opening the registry checks the owner and
    # refuses it. Any other failure (no SHM_DIRECTORY) is reported by that opening too.
    with contextlib.suppress(OSError):
        os.mkdir(private, 0o700)
    return private


def _made_by_root(path: str) -> bool:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == 0
