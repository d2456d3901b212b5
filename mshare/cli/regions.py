"""``mshare ls``, ``info``, ``create`` and ``rm``: regions of the registry."""

import argparse
import dataclasses
import datetime
import fnmatch
import json
import stat
import sys
from typing import Any, Callable, Dict, List, Optional, TypeVar

import mshare
from mshare.backends.selection import CHOICES
from mshare.cli.text import group_name, printable, table, user_name
from mshare.info import ListedRegion, RegionInfo
from mshare.names import validate_mode, validate_name, validate_size
from mshare.registry import registry_root
from mshare.units import format_size, parse_size


_Parsed = TypeVar("_Parsed")


def _argument_type(parse: Callable[[str], _Parsed],
                   validate: Callable[[_Parsed], _Parsed]) -> Callable[[str], _Parsed]:
    """An argparse type: a value ``validate`` refuses is a usage error (exit code 2)."""
    def convert(text: str) -> _Parsed:
        try:
            return validate(parse(text))
        except (TypeError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return convert


region_name: Callable[[str], str] = _argument_type(str, validate_name)
region_size: Callable[[str], int] = _argument_type(parse_size, validate_size)
octal_mode: Callable[[str], int] = _argument_type(lambda text: int(text, 8), validate_mode)


def complete_names(prefix: str, **_: Any) -> List[str]:
    """Region names for shell completion (argcomplete calls it with the word typed so far)."""
    return [region.name for region in mshare.list() if region.name.startswith(prefix)]


def as_json(region: ListedRegion) -> Dict[str, Any]:
    """``region`` as a JSON object: every field, the mode also as octal text, and the
    owner's and group's names."""
    found = dataclasses.asdict(region)
    found.update(mode_octal=f"{region.mode:04o}", owner=user_name(region.uid),
                 group=group_name(region.gid))
    return found


def _long_row(region: ListedRegion) -> List[str]:
    mode = stat.filemode(stat.S_IFREG | region.mode)
    owner, group = user_name(region.uid), group_name(region.gid)
    if not isinstance(region, RegionInfo):
        return [mode, owner, group, "?", "?", "?", "?", "?", "?",
                f"{printable(region.name)}  ({printable(region.status)})"]
    created = datetime.datetime.fromtimestamp(region.created).isoformat(timespec="minutes")
    return [mode, owner, group, format_size(region.size), f"{region.addr:#x}",
            format_size(region.page_size), region.backend, str(region.attached), created,
            printable(region.name)]


def _short_row(region: ListedRegion) -> List[str]:
    if not isinstance(region, RegionInfo):
        return ["?", "?", "?", f"{printable(region.name)}  ({printable(region.status)})"]
    return [format_size(region.size), region.backend, str(region.attached), printable(region.name)]


def command_ls(args: argparse.Namespace) -> None:
    regions = [region for region in mshare.list()
               if not args.patterns or any(fnmatch.fnmatchcase(region.name, pattern)
                                           for pattern in args.patterns)]
    if args.json:
        print(json.dumps([as_json(region) for region in regions], indent=2))
    elif args.long:
        header = ["MODE", "OWNER", "GROUP", "SIZE", "ADDRESS", "PAGE", "BACKEND", "ATTACHED",
                  "CREATED", "NAME"]
        print("\n".join(table(header, [_long_row(region) for region in regions], right=(3, 5, 7))))
    else:
        header = ["SIZE", "BACKEND", "ATTACHED", "NAME"]
        print("\n".join(table(header, [_short_row(region) for region in regions], right=(0, 2))))


def _named_objects(name: str) -> Optional[Dict[str, str]]:
    """The region's named objects and their kinds, or None when it cannot be mapped
    (its data object is gone, or it is on a mount this process cannot reach)."""
    try:
        with mshare.attach(name, readonly=True) as region:
            return region.objects()
    except OSError:
        return None


def command_info(args: argparse.Namespace) -> None:
    region = mshare.info(args.name)
    objects = _named_objects(args.name)
    if args.json:
        print(json.dumps(dict(as_json(region), objects=objects, registry=registry_root()), indent=2))
        return
    created = datetime.datetime.fromtimestamp(region.created).isoformat(timespec="seconds")
    rows = [
        ("name", printable(region.name)),
        ("address", f"{region.addr:#x}"),
        ("size", f"{region.size} ({format_size(region.size)})"),
        ("mode", f"{region.mode:04o} ({stat.filemode(stat.S_IFREG | region.mode)})"),
        ("owner", f"{user_name(region.uid)} ({region.uid})"),
        ("group", f"{group_name(region.gid)} ({region.gid})"),
        ("page size", format_size(region.page_size)),
        ("backend", region.backend),
        ("attached", region.attached),
        ("creator pid", region.creator_pid),
        ("created", created),
        ("objects", "(region cannot be mapped)" if objects is None else
         ", ".join(f"{printable(object_name)} ({kind})" for object_name, kind in objects.items())
         or "none"),
    ]
    for key, value in rows:
        print(f"{key + ':':<13}{value}")


def command_create(args: argparse.Namespace) -> None:
    with mshare.create(args.name, args.size, mode=args.mode, hugepages=args.hugepages) as region:
        print(f"created {printable(region.name)}: {format_size(region.size)} at {region.addr:#x} "
              f"({region.backend}, {format_size(region.page_size)} pages, mode {region.mode:04o})")


def command_rm(args: argparse.Namespace) -> int:
    """Remove every name it can, as ``rm`` does: a failure is reported and the rest
    still go; the exit code says whether any failed."""
    failed = False
    for name in args.names:
        try:
            mshare.unlink(name)
        except OSError as error:
            if isinstance(error, FileNotFoundError) and args.force:
                continue
            # The library's messages name the region, and whose it is.
            print(f"mshare rm: {printable(error.strerror or str(error))}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def add_parsers(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    ls = commands.add_parser("ls", help="list regions, like ls of msharefs",
                             description="List the registry's regions, sorted by name.")
    ls.add_argument("patterns", nargs="*", metavar="PATTERN",
                    help="only names matching one of these shell patterns (quote them: 'cache-*')")
    form = ls.add_mutually_exclusive_group()
    form.add_argument("-l", "--long", action="store_true",
                      help="mode, owner, group, address, page size and creation time too")
    form.add_argument("--json", action="store_true", help="a JSON array of objects, every field")
    ls.set_defaults(handler=command_ls)

    info = commands.add_parser("info", help="show one region and its named objects")
    info.add_argument("name", type=region_name).completer = complete_names
    info.add_argument("--json", action="store_true", help="a JSON object, every field")
    info.set_defaults(handler=command_info)

    create = commands.add_parser("create", help="create a region that lives until rm")
    create.add_argument("name", type=region_name)
    create.add_argument("size", type=region_size, help="bytes, or with a unit: 64M, 2G")
    create.add_argument("--mode", type=octal_mode, default=0o600, help="permission bits (default 0600)")
    create.add_argument("--hugepages", choices=CHOICES, default="auto",
                        help="backend: auto (default: the best available), hugetlb, thp, off")
    create.set_defaults(handler=command_create)

    rm = commands.add_parser("rm", help="unlink regions (mappings stay valid until closed)")
    rm.add_argument("names", nargs="+", metavar="NAME", type=region_name).completer = complete_names
    rm.add_argument("-f", "--force", action="store_true", help="say nothing of names that do not exist")
    rm.set_defaults(handler=command_rm)
