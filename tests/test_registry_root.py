"""The default registry (no ``MSHARE_ROOT``) cannot be taken by the first user: users get
private registries until root makes the shared one, which they then share.

Children run as real unprivileged users with ``mshare.registry_root.SHM_DIRECTORY``
pointed at a directory of this test, so the machine's ``/dev/shm/mshare`` is untouched.
"""

import json
import os
import shutil
import stat
import uuid

import pytest

from conftest import BASE
from helpers import run_python
from people import OWNER, STRANGER, as_owner, as_stranger


@pytest.fixture
def shm_directory(user_site):
    """A stand-in for /dev/shm: world-writable and sticky, like it."""
    path = os.path.join(BASE, f"shm-{uuid.uuid4().hex[:12]}")
    os.mkdir(path)
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path)


def in_default_registry(shm_directory, actions="", **identity):
    """Run ``actions`` (code using ``mshare``) without ``MSHARE_ROOT``; returns the
    registry the child used, its owner and mode, and the names it lists."""
    environment = {key: value for key, value in os.environ.items() if key != "MSHARE_ROOT"}
    result = run_python(f"""
        import json, os, stat
        import mshare
        import mshare.registry_root
        mshare.registry_root.SHM_DIRECTORY = {shm_directory!r}
        from mshare.registry import registry_root
        {actions}
        root = registry_root()
        info = os.stat(root)
        print(json.dumps({{"root": root, "uid": info.st_uid, "mode": stat.S_IMODE(info.st_mode),
                           "names": [region.name for region in mshare.list()]}}))
    """, env=environment, **identity)
    return json.loads(result.stdout)


CREATE = 'mshare.create("{0}", 4096, mode=0o644, hugepages="off").close()'
UNLINK = 'mshare.unlink("{0}")'


def test_users_get_private_registries_until_root_makes_the_shared_one(shm_directory):
    first = in_default_registry(shm_directory, f"{CREATE.format('mine')}; {UNLINK.format('mine')}",
                                **as_owner())
    assert (first["root"], first["uid"], first["mode"]) == (f"{shm_directory}/mshare-{OWNER}", OWNER, 0o700)
    assert not os.path.exists(f"{shm_directory}/mshare")

    # The first user took nothing from the second, who can use mshare as well.
    second = in_default_registry(shm_directory, f"{CREATE.format('theirs')}", **as_stranger())
    assert (second["root"], second["uid"], second["names"]) == (
        f"{shm_directory}/mshare-{STRANGER}", STRANGER, ["theirs"])
    in_default_registry(shm_directory, UNLINK.format("theirs"), **as_stranger())


def test_users_share_the_registry_root_made(shm_directory):
    made = in_default_registry(shm_directory, "mshare.list()")
    assert (made["root"], made["uid"], made["mode"]) == (f"{shm_directory}/mshare", 0, 0o1777)

    in_default_registry(shm_directory, CREATE.format("common"), **as_owner())
    seen = in_default_registry(shm_directory, 'mshare.attach("common", readonly=True).close()',
                               **as_stranger())
    assert (seen["root"], seen["names"]) == (f"{shm_directory}/mshare", ["common"])
    in_default_registry(shm_directory, UNLINK.format("common"), **as_owner())
    assert not os.path.exists(f"{shm_directory}/mshare-{OWNER}")


def test_a_shared_registry_a_user_made_is_used_by_nobody(shm_directory):
    taken = f"{shm_directory}/mshare"
    os.mkdir(taken)
    os.chmod(taken, 0o1777)
    os.chown(taken, OWNER, OWNER)
    for identity, uid in ((as_owner(), OWNER), (as_stranger(), STRANGER)):
        used = in_default_registry(shm_directory, f"{CREATE.format('here')}; {UNLINK.format('here')}",
                                   **identity)
        assert used["root"] == f"{shm_directory}/mshare-{uid}"
    assert os.listdir(taken) == []


def test_a_private_registry_made_by_another_user_is_refused(shm_directory):
    planted = f"{shm_directory}/mshare-{STRANGER}"
    os.mkdir(planted)
    os.chmod(planted, 0o755)
    os.chown(planted, OWNER, OWNER)
    refused = run_python(f"""
        import mshare, mshare.registry_root
        mshare.registry_root.SHM_DIRECTORY = {shm_directory!r}
        try:
            mshare.list()
        except mshare.UnsafeRegistryError as error:
            print(error)
    """, env={key: value for key, value in os.environ.items() if key != "MSHARE_ROOT"},
        **as_stranger())
    assert f"registry {planted} is owned by uid {OWNER}" in refused.stdout


def test_mshare_root_overrides_the_choice(registry_path):
    from mshare.registry import registry_root

    assert registry_root() == registry_path
    assert stat.S_ISDIR(os.stat(os.path.dirname(registry_path)).st_mode)
