"""`kvroute bench quality`: run workloads x policies on the discrete-event harness and write the report.

    kvroute bench quality --workloads all --policies all --seed 0 --out docs/benchmarks/quality

Progress goes to stderr (a tqdm bar), the TTFT p90 table and the files written to stdout, the wall time last.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from kvroute.bench.quality.policies.catalog import POLICIES, select, with_replicas
from kvroute.bench.quality.report import markdown, write_all
from kvroute.bench.quality.runner import run
from kvroute.bench.quality.workloads import WORKLOADS_DIR, WorkloadError, resolve


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "quality",
        help="routing quality: workloads x policies in simulated time",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workloads", default="all", help="all, or comma-separated names (of --workloads-dir) and YAML paths"
    )
    parser.add_argument(
        "--policies",
        default="all",
        help=f"all, or comma-separated names ({', '.join(POLICIES)}) and EndpointPickerConfig YAML paths",
    )
    parser.add_argument(
        "--replicas",
        default="1",
        help="comma-separated router replica counts, e.g. 1,2,4,8: every policy also runs as a fleet of that many "
        "replicas each seeing 1/N of the traffic (NAME@N), kvroute's also with fleet sync (NAME@N+sync); default 1",
    )
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--out", default="quality-results", help="output directory (default quality-results)")
    parser.add_argument("--workloads-dir", type=Path, default=WORKLOADS_DIR, help="where workload names are found")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    parser.add_argument("--no-plots", action="store_true", help="write the JSON and markdown only")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_command)


def _counts(text: str) -> list[int]:
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--replicas: not a list of counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"--replicas: counts must be 1 or more: {text!r}")
    return sorted(set(counts))


def run_command(args: argparse.Namespace) -> int:
    try:
        specs = resolve(args.workloads, args.workloads_dir)
        policies = with_replicas(select(args.policies), _counts(args.replicas))
    except (WorkloadError, ValueError) as exc:
        print(f"kvroute bench quality: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    progress = None
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(specs) * len(policies), unit="run", file=sys.stderr)

        def progress(workload: str, policy: str) -> None:
            assert bar is not None
            bar.set_postfix_str(f"{workload} / {policy}")
            bar.update()

    try:
        results = run(specs, policies, args.seed, jobs=args.jobs, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    out = Path(args.out)
    written = write_all(results, out, plots=not args.no_plots)
    table = markdown(results, str(out)).split("## ", 2)[1]
    print("## " + table.rstrip())
    for path in written:
        print(f"wrote {path}")
    print(f"{len(specs)} workloads x {len(policies)} policies in {time.perf_counter() - started:.0f} s wall")
    return 0
