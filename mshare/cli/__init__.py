# PYTHON_ARGCOMPLETE_OK  (argcomplete's global completion looks for this marker)
"""The ``mshare`` command, a layer above the library: ``ls``, ``info``, ``create``, ``rm``,
``gc``, ``doctor``, ``mount``, ``umount``, ``demo``, ``completion``.

Exit codes follow argparse and coreutils: 0 success; 2 a usage error (an unknown command
or option, or an argument no call could accept: a bad name, size or mode), found before
anything is done; 1 an operational error (the region is missing or exists, permission,
the machine refused). Bare ``mshare`` prints the help on stdout and exits 0. Errors print
one line to stderr.
"""

import argparse
import sys
from typing import List, Optional

import mshare
from mshare.cli import regions, system


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mshare", description="Named shared-memory regions at one fixed address in every process.",
        epilog="Exit codes: 0 success, 1 an operation failed, 2 a usage error.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {mshare.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    regions.add_parsers(commands)
    system.add_parsers(commands)
    return parser


def _complete(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request and exit, when this run is one (and the
    optional argcomplete is installed); otherwise return at once."""
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    _complete(parser)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("mshare: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError, ImportError) as error:
        message = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        print(f"mshare {args.command}: {message}", file=sys.stderr)
        return 1
