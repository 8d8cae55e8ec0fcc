"""`kvroute bench quality`: run workloads x policies on the discrete-event harness and write the report.

    kvroute bench quality --workloads all --policies all --seed 0 --out docs/benchmarks/quality
    kvroute bench quality --families all --sample 3 --seed 1000 --policies all --jobs 2
    kvroute bench quality --workloads bench/traces/sample-mooncake.jsonl --speed 2 --fleet engines=8

`--families` draws `--sample` workloads per family at sample seed `--seed` (training seeds 0-99, held-out seeds
1000 and up; docs/workload-families.md). A `.jsonl` in `--workloads` is a trace, replayed with `--speed`,
`--window`, `--max-context` on the `--fleet`. Without `--families` and `--workloads`, every workload file runs.

Progress goes to stderr (a tqdm bar), the TTFT p90 table and the files written to stdout, the wall time last.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from kvroute.bench.quality.families import FAMILIES_DIR, resolve_families, sample
from kvroute.bench.quality.policies.catalog import POLICIES, select, with_replicas
from kvroute.bench.quality.report import markdown, write_all
from kvroute.bench.quality.runner import run
from kvroute.bench.quality.traces import parse_fleet, trace_workload
from kvroute.bench.quality.workloads import WORKLOADS_DIR, WorkloadError, WorkloadSpec, resolve


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "quality",
        help="routing quality: workloads x policies in simulated time",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workload_arguments(parser)
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
    parser.add_argument("--seed", type=int, default=0, help="run seed and family sample seed (default 0)")
    parser.add_argument("--out", default="quality-results", help="output directory (default quality-results)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    parser.add_argument("--no-plots", action="store_true", help="write the JSON and markdown only")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_command)


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that select workloads (`workloads`), shared with `kvroute bench live`."""
    parser.add_argument(
        "--workloads",
        help="all, or comma-separated names (of --workloads-dir), YAML paths and JSONL traces (Mooncake or plain); "
        "default all unless --families is given",
    )
    parser.add_argument(
        "--families", help="all, or comma-separated family names (of --families-dir) and paths: sampled workloads"
    )
    parser.add_argument("--sample", type=int, default=3, help="workloads drawn per family (default 3)")
    parser.add_argument("--families-dir", type=Path, default=FAMILIES_DIR, help="where family names are found")
    parser.add_argument("--speed", type=float, default=1.0, help="traces: time compression, timestamps / X")
    parser.add_argument(
        "--window", help="traces: START:END, the seconds of the trace to keep (times then start at START = 0)"
    )
    parser.add_argument(
        "--max-context", type=int, help="traces: clip input + output to N tokens (default the profile's max_model_len)"
    )
    parser.add_argument(
        "--fleet",
        default="engines=8",
        help="traces: the fleet, comma-separated key=value: engines, profile, prefill_engines, slow_engines, "
        "slow_factor and profile fields (num_gpu_blocks=...); default engines=8 of llama-3.1-8b-h100",
    )
    parser.add_argument("--workloads-dir", type=Path, default=WORKLOADS_DIR, help="where workload names are found")


def _counts(text: str) -> list[int]:
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--replicas: not a list of counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"--replicas: counts must be 1 or more: {text!r}")
    return sorted(set(counts))


def _window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(start), float(end)
    except ValueError:
        raise ValueError(f"--window: expected START:END in seconds, got {text!r}") from None


def workloads(args: argparse.Namespace) -> list[WorkloadSpec]:
    """The selected workloads: named and YAML ones, then traces, then the families' samples."""
    selection = args.workloads if args.workloads is not None or args.families else "all"
    items = [item.strip() for item in (selection or "").split(",") if item.strip()]
    traces = [item for item in items if item.endswith(".jsonl")]
    named = [item for item in items if not item.endswith(".jsonl")]
    specs = resolve(",".join(named), args.workloads_dir) if named else []
    if traces:
        fleet = parse_fleet(args.fleet)
        options = {"speed": args.speed, "window": _window(args.window), "max_context": args.max_context}
        specs += [trace_workload(path, fleet, **options) for path in traces]
    if args.families:
        if args.sample < 1:
            raise ValueError("--sample: at least 1")
        for family in resolve_families(args.families, args.families_dir):
            specs += sample(family, args.seed, args.sample)
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise WorkloadError(f"workload(s) selected twice: {', '.join(duplicates)}")
    return specs


def run_command(args: argparse.Namespace) -> int:
    try:
        specs = workloads(args)
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
    except WorkloadError as exc:  # a bad trace line, found when the trace is read
        print(f"kvroute bench quality: {exc}", file=sys.stderr)
        return 2
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
