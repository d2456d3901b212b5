"""Build the Cython core. MSHARE_DEBUG=1 turns on annotation and line tracing."""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("MSHARE_DEBUG") == "1"

macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
extensions = [
    Extension(
        f"mshare.{module}",
        [f"mshare/{module}.pyx"],
        define_macros=macros,
        include_dirs=[numpy.get_include()] if module == "_queue" else [],
        extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
    )
    for module in ("_core", "_allocator", "_mutex", "_slots", "_shared", "_waiting", "_queue")
]

setup(
    ext_modules=cythonize(
        extensions,
        annotate=DEBUG,
        compiler_directives={"linetrace": DEBUG},
    )
)
