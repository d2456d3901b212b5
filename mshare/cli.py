"""The ``mshare`` command: ``ls``, ``info``, ``create``, ``rm``, ``gc``, ``demo``, ``mount``, ``umount``, ``doctor``.

Errors print one line to stderr and exit non-zero (2 for usage, 1 for failures).
"""

import argparse
import datetime
import grp
import pwd
import stat
import sys

import mshare
from mshare import doctor, mounts
from mshare.backends.selection import CHOICES
from mshare.registry import registry_root
from mshare.units import format_size, size_argument


def _user(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def printable(name):
    """``name`` with control characters and undecodable bytes escaped, as ``ls -b``
    does: anyone can name an entry, and the name must not drive the terminal."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in name)


def command_ls(args):
    regions = mshare.list()
    print(f"registry {registry_root()}: {len(regions)} region(s)")
    for region in regions:
        mode = stat.filemode(stat.S_IFREG | region.mode)
        owner = f"{_user(region.uid)} {_group(region.gid)}"
        if region.status != "ok":
            print(f"{mode} {owner:>16} {'?':>7} {'?':>18} {'?':>6} {'?':>7} {'?':>3} "
                  f"{printable(region.name)}  ({printable(region.status)})")
            continue
        print(
            f"{mode} {owner:>16} {format_size(region.size):>7} {region.addr:#018x} "
            f"{format_size(region.page_size):>6} {region.backend:>7} {region.attached:>3} "
            f"{printable(region.name)}"
        )


def command_info(args):
    region = mshare.info(args.name)
    created = datetime.datetime.fromtimestamp(region.created).isoformat(timespec="seconds")
    rows = [
        ("name", printable(region.name)),
        ("address", f"{region.addr:#x}"),
        ("size", f"{region.size} ({format_size(region.size)})"),
        ("mode", f"{region.mode:04o} ({stat.filemode(stat.S_IFREG | region.mode)})"),
        ("owner", f"{_user(region.uid)} ({region.uid})"),
        ("group", f"{_group(region.gid)} ({region.gid})"),
        ("page size", format_size(region.page_size)),
        ("backend", region.backend),
        ("attached", region.attached),
        ("creator pid", region.creator_pid),
        ("created", created),
    ]
    for key, value in rows:
        print(f"{key + ':':<13}{value}")


def command_create(args):
    with mshare.create(args.name, args.size, mode=args.mode, hugepages=args.hugepages) as region:
        print(f"created {region.name}: {format_size(region.size)} at {region.addr:#x} "
              f"({region.backend}, {format_size(region.page_size)} pages, mode {region.mode:04o})")


def command_rm(args):
    for name in args.names:
        mshare.unlink(name)


def command_gc(args):
    report = mshare.gc(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for finding in report.removed:
        print(f"{verb} {finding.kind} {printable(finding.path)}: {finding.reason}")
    for finding in report.kept:
        print(f"kept {finding.kind} {printable(finding.path)}: {finding.reason}")
    print(f"{len(report.removed)} {verb}, {len(report.kept)} kept")


def command_demo(args):
    from mshare import demo

    return demo.run(args)


def _octal_mode(text):
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r} (try 0640)") from None


def build_parser():
    parser = argparse.ArgumentParser(
        prog="mshare", description="Named shared-memory regions at one fixed address in every process."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ls = commands.add_parser("ls", help="list regions like ls -l of msharefs")
    ls.set_defaults(handler=command_ls)

    info = commands.add_parser("info", help="show one region")
    info.add_argument("name")
    info.set_defaults(handler=command_info)

    create = commands.add_parser("create", help="create a region that lives until rm")
    create.add_argument("name")
    create.add_argument("size", type=size_argument, help="bytes, or with a unit: 64M, 2G")
    create.add_argument("--mode", type=_octal_mode, default=0o600, help="permission bits (default 0600)")
    create.add_argument("--hugepages", choices=CHOICES, default="auto",
                        help="backend: auto (default: the best available), hugetlb, thp, off")
    create.set_defaults(handler=command_create)

    rm = commands.add_parser("rm", help="unlink regions (mappings stay valid until closed)")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.set_defaults(handler=command_rm)

    demo = commands.add_parser("demo", help="show what mshare does, with worker processes")
    from mshare import demo as demo_module

    demo_module.add_arguments(demo)
    demo.set_defaults(handler=command_demo)

    gc = commands.add_parser("gc", help="remove what crashed processes left behind")
    gc.add_argument("--dry-run", action="store_true", help="only report what would go")
    gc.set_defaults(handler=command_gc)

    mounts.add_parser(commands)
    doctor.add_parser(commands)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("mshare: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError) as error:
        message = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        print(f"mshare {args.command}: {message}", file=sys.stderr)
        return 1
