"""The identities permission tests run as: ids that exist on no real system account.

``MEMBER`` shares ``OWNER``'s group through a supplementary group, the way a colleague
would; ``STRANGER`` shares nothing and plays the attacker.
"""

OWNER = 2101
OWNER_GROUP = 2101
MEMBER = 2102
MEMBER_GROUP = 2102
STRANGER = 2103
STRANGER_GROUP = 2103


def as_owner():
    return {"user": OWNER, "group": OWNER_GROUP}


def as_member():
    return {"user": MEMBER, "group": MEMBER_GROUP, "groups": [OWNER_GROUP]}


def as_stranger():
    return {"user": STRANGER, "group": STRANGER_GROUP}
