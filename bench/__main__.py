"""`python -m bench` runs the suite and writes bench/results/ (see bench/run.py)."""

import sys

# `python -m` puts the working directory first on sys.path; from a checkout, the source
# `mshare` there (without its compiled core) would shadow the installed one. Look there
# last, where only `bench` itself is found.
sys.path.append(sys.path.pop(0))

from bench.run import main  # noqa: E402

sys.exit(main())
