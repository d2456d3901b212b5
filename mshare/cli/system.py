"""``mshare gc``, ``doctor``, ``mount``, ``umount``, ``demo`` and ``completion``: the
machine and the registry as a whole."""

import argparse
import shlex
import sys
from typing import Any, Callable

import mshare
from mshare import doctor, mounts
from mshare.cli.text import as_root, printable, this_command
from mshare.units import size_argument

COMPLETION_SHELLS = ("bash", "zsh", "fish", "tcsh")


def command_gc(args: argparse.Namespace) -> None:
    report = mshare.gc(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for finding in report.removed:
        print(f"{verb} {finding.kind} {printable(finding.path)}: {finding.reason}")
    for finding in report.kept:
        print(f"kept {finding.kind} {printable(finding.path)}: {finding.reason}")
    print(f"{len(report.removed)} {verb}, {len(report.kept)} kept")


def command_doctor(args: argparse.Namespace) -> None:
    print("\n".join(doctor.report(args.size, command=this_command())))


def _as_root_only(action: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], Any]:
    """``action``, with the command line that runs it as root added to a refusal."""
    def run(args: argparse.Namespace) -> Any:
        try:
            return action(args)
        except PermissionError as error:
            raise PermissionError(error.errno, f"{error.strerror}; run: "
                                  f"{as_root(shlex.join(sys.argv[1:]) or args.command)}") from None
    return run


def command_demo(args: argparse.Namespace) -> int:
    from mshare import demo  # runs worker processes: loaded only for this command

    return demo.run(args)


def command_completion(args: argparse.Namespace) -> None:
    try:
        import argcomplete
    except ImportError:
        raise ModuleNotFoundError(
            "shell completion needs argcomplete: pip install 'mshare[completion]'") from None
    print(argcomplete.shellcode(["mshare"], shell=args.shell), end="")


def add_parsers(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from mshare import demo

    gc = commands.add_parser("gc", help="remove what crashed processes left behind")
    gc.add_argument("--dry-run", action="store_true", help="only report what would go")
    gc.set_defaults(handler=command_gc)

    doctor_parser = commands.add_parser(
        "doctor", help="what this machine offers, and how to enable huge pages")
    doctor_parser.add_argument("--size", type=size_argument, default=1 << 30,
                               help="region size to choose a backend for (default 1G)")
    doctor_parser.set_defaults(handler=command_doctor)

    mount = commands.add_parser(
        "mount", help="(root) set up hugetlbfs, a huge-page tmpfs and the huge page pool")
    mount.add_argument("--hugepages", type=size_argument, metavar="SIZE",
                       help="grow the pool until at least SIZE is free (e.g. 4G)")
    mount.add_argument("--page-size", type=size_argument, metavar="SIZE",
                       help="huge page size: 2M (default) or 1G where the CPU has them")
    mount.set_defaults(handler=_as_root_only(lambda args: mounts.mount(args.hugepages, args.page_size)))
    umount = commands.add_parser("umount", help="(root) undo exactly what mshare mount did")
    umount.set_defaults(handler=_as_root_only(lambda args: mounts.umount()))

    demo_parser = commands.add_parser("demo", help="show what mshare does, with worker processes")
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(handler=command_demo)

    completion = commands.add_parser(
        "completion", help="print the shell code that completes mshare's commands and names",
        description="Print shell code for tab completion (needs the completion extra: "
                    "pip install 'mshare[completion]'). In bash: "
                    'eval "$(mshare completion bash)", or add that line to ~/.bashrc.')
    completion.add_argument("shell", choices=COMPLETION_SHELLS)
    completion.set_defaults(handler=command_completion)
