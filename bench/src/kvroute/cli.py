"""The `kvroute` command: one entry point, one sub-command per part of the product.

Each part owns its argument parser (`kvroute.<part>.cli.register`); sub-command modules are imported only
when that sub-command runs, so `kvroute sim serve` never loads the benchmark code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# sub-command -> (module providing `register(subparsers)` , help)
_PARTS: dict[str, tuple[str, str]] = {
    "router": ("kvroute.router.cli", "KV-cache-aware router"),
    "operator": ("kvroute.operator.cli", "Kubernetes operator: one router per InferencePool"),
    "sim": ("kvroute.simulator.cli", "vLLM-compatible simulator"),
    "bench": ("kvroute.bench.cli", "benchmarks: routing quality, live side by side, overhead"),
    "demo": ("kvroute.bench.demo", "run the demo on simulated pods"),
    "tune": ("kvroute.bench.tune.cli", "search scheduling weights and parameters for your traffic"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvroute", description="KV-cache-aware router for LLM inference")
    sub = parser.add_subparsers(dest="part", required=True, metavar="COMMAND")
    wanted = argv[0] if argv else None
    for name, (module, help_text) in _PARTS.items():
        if name == wanted:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(args_list).parse_args(args_list)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
