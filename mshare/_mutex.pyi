# The region lock's C functions, cimported by ``mshare._shared`` (``RegionLock``); the
# module exports nothing to Python.
