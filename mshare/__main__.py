import sys

from mshare.cli import main

sys.exit(main())
