"""Errors of the Ray extra.

They live here rather than in ``mshare.errors`` because only this extra raises them: the
core never sees a cluster. Both derive from ``mshare.MshareError``, so one ``except``
clause still catches everything mshare raises.
"""

import errno

from mshare.errors import MshareError


class NodeDiedError(MshareError):
    """The Ray node is dead (or was removed): its regions died with it."""

    def __init__(self, message: str, node_id: str | None = None) -> None:
        super().__init__(errno.EHOSTDOWN, message, node_id)


class OwnerLostError(MshareError):
    """The region exists on a live node but its owner actor is gone (killed or crashed).

    ``mshare.ray.attach(name, size)`` or ``ensure`` starts a new owner that adopts the
    region with its data; ``destroy`` removes it.
    """

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(errno.ESRCH, message, name)
