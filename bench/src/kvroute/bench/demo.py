"""`kvroute demo`: kvroute against round-robin on a local fleet of simulated GPUs, in about a minute.

Four `kvroute sim serve` processes (8B-on-H100 timing, a KV cache cut down to 600 blocks so that each server
holds only a few system prompts) listen on 127.0.0.2-5. The same kvroute proxy runs twice in front of them: first
with kvroute's recommended configuration (`router/.../config/recommended.yaml`), then with a
round-robin picker. Each run replays the same open-loop shared-prefix trace (12 system prompts of 2,000
tokens, short questions); the demo prints TTFT percentiles, prefix-cache hit rates and the share of requests each
server took, and writes a PNG of the TTFT distributions. Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import string
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvroute.bench.loadgen import Outcome, PlannedRequest, run_open_loop
from kvroute.bench.processes import ManagedProcess, ProcessGroup, kvroute_command, simulator
from kvroute.router.config.recommended import recommended_config_text

SIM_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
SIM_PORT = 18000
ROUTER_HOST, ROUTER_PORT = "127.0.0.1", 18080
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SIM_ARGS = ("--model", MODEL, "--num-gpu-blocks", "600")

ROUND_ROBIN_CONFIG = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: round-robin-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: round-robin-picker}
"""


def register(sub: Any) -> None:
    parser = sub.add_parser("demo", help="run the demo on simulated pods", description=__doc__)
    parser.add_argument("--duration", type=float, default=25.0, help="seconds of traffic per run (default 25)")
    parser.add_argument("--rate", type=float, default=12.0, help="requests per second (default 12)")
    parser.add_argument("--seed", type=int, default=1, help="trace seed (default 1)")
    parser.add_argument("--plot", default="kvroute-demo.png", help="where to write the PNG (default kvroute-demo.png)")
    parser.set_defaults(run=run)


def shared_prefix_trace(duration: float, rate: float, seed: int) -> list[PlannedRequest]:
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + "    "
    systems = ["".join(rng.choices(alphabet, k=8000)) for _ in range(12)]
    plan: list[PlannedRequest] = []
    at = 0.0
    while True:
        at += rng.expovariate(rate)
        if at >= duration:
            return plan
        prompt = rng.choice(systems) + "".join(rng.choices(alphabet, k=256))
        plan.append(PlannedRequest(at=at, body={"model": MODEL, "prompt": prompt, "max_tokens": 32}))


@dataclass
class RunResult:
    name: str
    outcomes: list[Outcome]

    def ttfts(self) -> list[float]:
        return sorted(o.ttft for o in self.outcomes if o.ttft is not None)

    def percentile(self, q: float) -> float:
        values = self.ttfts()
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outcomes if o.status != 200 or o.error)

    @property
    def hit_rate(self) -> float:
        prompt = sum(o.prompt_tokens for o in self.outcomes) or 1
        return sum(o.cached_tokens for o in self.outcomes) / prompt

    def shares(self) -> list[float]:
        total = len(self.outcomes) or 1
        return [sum(1 for o in self.outcomes if o.pod == f"sim-{h}-{SIM_PORT}") / total for h in SIM_HOSTS]


def router(config: Path) -> ManagedProcess:
    endpoints = ",".join(f"{h}:{SIM_PORT}" for h in SIM_HOSTS)
    argv = kvroute_command(
        "router", "--mode", "proxy", "--endpoints", endpoints, "--config", str(config),
        "--host", ROUTER_HOST, "--port", str(ROUTER_PORT),
    )  # fmt: skip
    return ManagedProcess("router", argv, f"http://{ROUTER_HOST}:{ROUTER_PORT}/readyz")


async def one_run(name: str, config_text: str, plan: Sequence[PlannedRequest], workdir: Path) -> RunResult:
    from tqdm import tqdm

    config = workdir / f"{name}.yaml"
    config.write_text(config_text)
    # A fresh fleet per run: both policies start from cold caches.
    group = ProcessGroup([simulator(h, SIM_PORT, *SIM_ARGS) for h in SIM_HOSTS])
    async with group:
        proxy = ProcessGroup([router(config)])
        async with proxy:
            with tqdm(total=len(plan), desc=f"{name:>11}", unit="req", mininterval=0.5) as bar:
                outcomes = await run_open_loop(
                    f"http://{ROUTER_HOST}:{ROUTER_PORT}", plan, timeout=60.0, on_done=lambda _: bar.update()
                )
    return RunResult(name, outcomes)


def table(results: Sequence[RunResult]) -> str:
    rows = ["| policy | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | prefix hit rate | errors | requests per server |"]
    rows.append("|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        shares = " / ".join(f"{s:.0%}" for s in r.shares())
        rows.append(
            f"| {r.name} | {r.percentile(0.5) * 1e3:.1f} | {r.percentile(0.9) * 1e3:.1f} | "
            f"{r.percentile(0.99) * 1e3:.1f} | {r.hit_rate:.1%} | {r.errors} | {shares} |"
        )
    return "\n".join(rows)


def plot(results: Sequence[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for r in results:
        values = [v * 1e3 for v in r.ttfts()]
        axis.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=r.name)
    axis.set_xscale("log")
    axis.set_xlabel("time to first token (ms, log scale)")
    axis.set_ylabel("fraction of requests")
    axis.set_title("TTFT on 4 simulated H100s, shared-prefix trace")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run(args: argparse.Namespace) -> int:
    plan = shared_prefix_trace(args.duration, args.rate, args.seed)
    print(f"kvroute demo: {len(plan)} requests over {args.duration:.0f}s, 4 simulated servers on {SIM_HOSTS[0]}-5")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kvroute-demo-") as tmp:
        results = [
            asyncio.run(one_run("kvroute", recommended_config_text(), plan, Path(tmp))),
            asyncio.run(one_run("round-robin", ROUND_ROBIN_CONFIG, plan, Path(tmp))),
        ]
    print()
    print(table(results))
    kv, rr = results
    print(
        f"\nTTFT p90: kvroute {kv.percentile(0.9) * 1e3:.1f} ms vs round-robin {rr.percentile(0.9) * 1e3:.1f} ms "
        f"({rr.percentile(0.9) / max(kv.percentile(0.9), 1e-9):.1f}x lower)"
    )
    plot(results, Path(args.plot))
    print(f"plot: {args.plot}   total time: {time.perf_counter() - started:.0f}s")
    return 0 if all(r.errors == 0 for r in results) else 1
