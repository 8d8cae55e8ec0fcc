"""`kvroute tune`: search scheduling weights and parameters for your traffic (docs/tune.md).

    kvroute tune --workloads multi-turn --trials 24 --jobs 2 --out tune-results

Trials run on the training cases, the winner is compared with the base and the peers on training and held-out
cases. Progress goes to stderr (a tqdm bar); the report goes to stdout and to OUT/report.md and OUT/report.json;
the chosen configuration to OUT/endpoint-picker-config.yaml and OUT/schedulingprofile.yaml. Re-running the same
command resumes from OUT/journal.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from kvroute.bench.quality.families import FAMILIES_DIR
from kvroute.bench.quality.workloads import WORKLOADS_DIR
from kvroute.bench.tune.cases import CaseError, Selection
from kvroute.bench.tune.journal import JournalError
from kvroute.bench.tune.outputs import write_outputs
from kvroute.bench.tune.report import markdown, write_report
from kvroute.bench.tune.space import SpaceError
from kvroute.bench.tune.tuner import Options, tune

DEFAULT_PEERS = "gie-default,llmd-blend,sglang-cache-aware,dynamo"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "tune",
        help="search scheduling weights and parameters for your traffic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workloads", default="", help="comma-separated workload names, YAML paths, .jsonl traces")
    parser.add_argument("--families", default="", help="comma-separated workload families to sample from")
    parser.add_argument("--sample", type=int, default=3, help="workloads sampled per family and seed (default 3)")
    parser.add_argument("--train-seeds", default="0,1,2", help="seeds of the training cases (default 0,1,2)")
    parser.add_argument(
        "--holdout-seeds", default="1000,1001,1002", help="seeds of the held-out cases (default 1000,1001,1002)"
    )
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.3,
        help="traces: the last share of the trace's duration held out (default 0.3)",
    )
    parser.add_argument(
        "--fleet",
        default="engines=8",
        help="traces: the fleet to replay them on, as in `kvroute bench quality`: KEY=VALUE,... of fleet and "
        "profile fields, e.g. engines=8,profile=llama-3.1-8b-h100,num_gpu_blocks=4000 (default engines=8)",
    )
    parser.add_argument(
        "--max-context", type=int, default=None, help="traces: clip input + output to N tokens (default max_model_len)"
    )
    parser.add_argument("--speed", type=float, default=1.0, help="traces: time compression (2: twice as fast)")
    parser.add_argument("--workloads-dir", type=Path, default=WORKLOADS_DIR, help="where workload names are found")
    parser.add_argument("--families-dir", type=Path, default=FAMILIES_DIR, help="where family names are found")
    parser.add_argument(
        "--base", type=Path, default=None, help="EndpointPickerConfig to start from (default: recommended)"
    )
    parser.add_argument("--space", type=Path, default=None, help="search space YAML (default: derived from the base)")
    parser.add_argument("--trials", type=int, default=24, help="candidate configurations besides the base (default 24)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the candidates (default 0)")
    parser.add_argument("--peers", default=DEFAULT_PEERS, help=f"policies to compare with (default {DEFAULT_PEERS})")
    parser.add_argument(
        "--out", type=Path, default=Path("tune-results"), help="output directory (default tune-results)"
    )
    parser.add_argument("--pool", default="my-pool", help="InferencePool of the SchedulingProfile (default my-pool)")
    parser.add_argument("--namespace", default="default", help="namespace of the SchedulingProfile (default default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_command)


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _seeds(text: str, flag: str) -> list[int]:
    try:
        return [int(item) for item in _items(text)]
    except ValueError:
        raise CaseError(f"{flag}: not a list of integers: {text!r}") from None


def _options(args: argparse.Namespace) -> Options:
    if args.trials < 0:
        raise CaseError("--trials must be 0 or more")
    selection = Selection(
        workloads=_items(args.workloads),
        families=_items(args.families),
        sample=args.sample,
        train_seeds=_seeds(args.train_seeds, "--train-seeds"),
        holdout_seeds=_seeds(args.holdout_seeds, "--holdout-seeds"),
        holdout_fraction=args.holdout_fraction,
        fleet=args.fleet,
        speed=args.speed,
        max_context=args.max_context,
        workloads_dir=args.workloads_dir,
        families_dir=args.families_dir,
    )
    return Options(
        selection=selection,
        out=args.out,
        base=args.base,
        space=args.space,
        trials=args.trials,
        jobs=args.jobs,
        seed=args.seed,
        peers=_items(args.peers),
    )


def run_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    bar = None
    progress = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="run", file=sys.stderr)

        def progress(planned: int) -> None:
            assert bar is not None
            if planned:
                bar.total = (bar.total or 0) + planned
                bar.refresh()
            else:
                bar.update()

    try:
        result = tune(_options(args), progress)
    except (CaseError, SpaceError, JournalError, ValueError) as exc:
        print(f"kvroute tune: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    chosen = result["verdict"]["chosen"]
    header = (
        f"Chosen by `kvroute tune` (seed {args.seed}, {args.trials} trials, base: {result['base']}): {chosen}.\n"
        f"{result['verdict']['text']}.\nThe numbers behind it: report.md next to this file."
    )
    written = write_outputs(result["configs"][chosen], header, args.out, pool=args.pool, namespace=args.namespace)
    written += write_report(result, args.out)
    print(markdown(result, full=False).rstrip())
    print()
    for path in written:
        print(f"wrote {path}")
    print(
        f"{result['trials'] + 1} configurations, {len(result['splits']['train']['cases'])} training and "
        f"{len(result['splits']['holdout']['cases'])} held-out cases in {time.perf_counter() - started:.0f} s wall"
    )
    return 0
