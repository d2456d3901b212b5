# The name table's C functions, cimported by ``mshare._shared``; Python sees only the limit.

NAME_MAX_BYTES: int
