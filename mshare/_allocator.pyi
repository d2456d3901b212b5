# The allocator is reached from Python only through ``Bookkeeping`` (``mshare._shared``),
# which cimports its C functions; the module itself exports just this exception.

class _Damaged(Exception): ...
