"""`python -m bench` runs the suite and writes bench/results/ (see bench/run.py)."""

import sys

from bench.run import main

sys.exit(main())
