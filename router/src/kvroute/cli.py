"""The `kvroute` command: one entry point, one sub-command per part of the product.

Each part publishes its sub-commands in the `kvroute.commands` entry-point group (pyproject.toml): the entry
point's name is the sub-command, its object the part's `register(subparsers)`, which adds that sub-command's
parser. Only the sub-command being run is loaded, so `kvroute sim serve` never loads the benchmark code and this
module names none of the parts; without a sub-command (`kvroute --help`) every part is loaded to show its help.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

GROUP = "kvroute.commands"


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser of `kvroute argv...`: the sub-command named by `argv[0]` is complete, the others are names."""
    parser = argparse.ArgumentParser(prog="kvroute", description="KV-cache-aware router for LLM inference")
    sub = parser.add_subparsers(dest="part", required=True, metavar="COMMAND")
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    for command in entry_points(group=GROUP):
        if wanted is None or command.name == wanted:
            try:
                register = command.load()
            except ModuleNotFoundError as error:
                # Each image carries only its own parts (the router image has no simulator): the metadata still
                # names them all. A part that is not there is left out of the help, and refused when asked for.
                if error.name is None or not f"{command.module}.".startswith(f"{error.name}."):
                    raise
                if command.name == wanted:
                    parser.error(f"`kvroute {wanted}` is not installed here ({error.name} is missing)")
                continue
            register(sub)
        else:
            sub.add_parser(command.name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(args_list).parse_args(args_list)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
