"""The public face as a user meets it: star imports, exported names."""

import builtins

import mshare


def test_star_import_never_shadows_a_builtin():
    namespace = {}
    exec("from mshare import *", namespace)
    shadowed = sorted(name for name in namespace if name != "__builtins__" and hasattr(builtins, name))
    assert shadowed == []


def test_every_exported_name_exists_and_list_stays_available():
    missing = [name for name in mshare.__all__ if not hasattr(mshare, name)]
    assert missing == []
    assert mshare.list is mshare.list_regions
