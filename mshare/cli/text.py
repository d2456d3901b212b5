"""What the command line prints: names made safe for a terminal, user and group names,
aligned tables, and the way to run this very ``mshare`` again (for ``sudo`` hints)."""

import grp
import os
import pwd
import shlex
import shutil
import sys
from typing import List, Sequence


def printable(name: str) -> str:
    """``name`` with control characters and undecodable bytes escaped, as ``ls -b``
    does: anyone can name an entry, and the name must not drive the terminal."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in name)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> List[str]:
    """``header`` and ``rows`` as lines of columns two spaces apart; the columns whose
    indexes are in ``right`` (numbers) are right-aligned. The last column is not padded:
    it holds names, whose trailing spaces are their own."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header) - 1)]
    return ["  ".join([cell.rjust(width) if column in right else cell.ljust(width)
                       for column, (cell, width) in enumerate(zip(row, widths))] + [row[-1]])
            for row in [header, *rows]]


def this_command() -> str:
    """How to run the ``mshare`` being run now, as a full path: ``sudo`` resets ``PATH``,
    so ``sudo mshare`` would not find a virtual environment's ``mshare``."""
    program = sys.argv[0] if sys.argv else ""
    if program in ("", "-c"):  # main() called from python -c: no command to name
        return "mshare"
    if os.path.basename(program) == "__main__.py":  # python -m mshare
        return shlex.join([sys.executable, "-m", "mshare"])
    if os.sep not in program:
        program = shutil.which(program) or program
    return shlex.quote(os.path.abspath(program))


def as_root(arguments: str) -> str:
    """The command line that runs ``mshare ARGUMENTS`` as root."""
    return f"sudo {this_command()} {arguments}"
