"""`kvroute sim ...`: the simulator's sub-commands.

`kvroute sim serve` runs one vLLM-compatible model server whose engine is the simulator's model, in real time
(scaled by `--time-scale`). Start several side by side on 127.0.0.2, 127.0.0.3, ... to get a fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from typing import Any

from kvroute.simulator.des import cli as des_cli
from kvroute.simulator.engine.kv_events import KVCacheGroup
from kvroute.simulator.engine.profiles import DEFAULT_PROFILE, PROFILES, get_profile
from kvroute.simulator.server.config import DEFAULT_MODEL, ServerConfig
from kvroute.simulator.server.faults import FAILURE_TYPES

# Flags that override the profile field of the same name.
_PROFILE_OVERRIDES = (
    "max_loras",
    "max_num_seqs",
    "max_num_batched_tokens",
    "num_gpu_blocks",
    "block_size",
    "max_model_len",
)


def register(sub: Any) -> None:
    sim = sub.add_parser("sim", help="vLLM-compatible simulator", description=__doc__)
    commands = sim.add_subparsers(dest="sim_command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run one simulated vLLM server",
        description="Run one vLLM-compatible server backed by the simulator's engine model.",
    )
    _add_serve_arguments(serve)
    serve.set_defaults(run=_run_serve, parser=serve)
    des_cli.register(commands)


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=8000, help="port to listen on (default 8000)")
    add(
        "--profile",
        default=DEFAULT_PROFILE,
        choices=sorted(PROFILES),
        help=f"calibrated engine profile: capacity and step-time model (default {DEFAULT_PROFILE})",
    )
    add(
        "--time-scale",
        type=float,
        default=1.0,
        help="wall seconds per modelled second; 0.1 runs ten times faster than the modelled GPU (default 1.0)",
    )
    add("--model", default=DEFAULT_MODEL, help=f"the model served (default {DEFAULT_MODEL})")
    add(
        "--served-model-name",
        nargs="+",
        default=[],
        metavar="NAME",
        help="names the model answers to in requests; the first labels the metrics (default: --model)",
    )
    add(
        "--lora-modules",
        nargs="+",
        default=[],
        metavar="NAME[=PATH]",
        help="LoRA adapters served on top of the model, usable as the request's model",
    )
    add("--max-loras", type=int, help="LoRA adapters that can run in one batch (overrides the profile)")
    add("--max-num-seqs", type=int, help="sequences in the running batch (overrides the profile)")
    add("--max-num-batched-tokens", type=int, help="token budget of one engine step (overrides the profile)")
    add("--num-gpu-blocks", type=int, help="KV-cache blocks (overrides the profile)")
    add("--block-size", type=int, help="tokens per KV-cache block (overrides the profile)")
    add("--max-model-len", type=int, help="longest prompt plus output, in tokens (overrides the profile)")
    add(
        "--global-cache-hit-threshold",
        type=float,
        help="finish a request at once (finish_reason cache_threshold) when less than this fraction (0..1) of "
        "its prompt is cached; a request's own cache_hit_threshold takes precedence",
    )
    add(
        "--role",
        choices=("both", "prefill", "decode"),
        default="both",
        help="P/D role: a prefill server ignores do_remote_prefill, a decode server ignores do_remote_decode "
        "(default both: honours either)",
    )
    add(
        "--failure-injection-rate",
        type=float,
        default=0.0,
        metavar="PCT",
        help="percentage of inference requests answered with an injected error (default 0)",
    )
    add(
        "--failure-types",
        nargs="+",
        default=[],
        choices=sorted(FAILURE_TYPES),
        help="kinds of injected errors (default: all)",
    )
    add("--seed", type=int, default=0, help="seed of the output texts and of failure injection (default 0)")
    add("--pod-name", help="value of the x-inference-pod response header (default sim-<host>-<port>)")
    add("--namespace", default="default", help="value of the x-inference-namespace response header")
    add(
        "--default-max-tokens",
        type=int,
        default=16,
        help="output tokens of a request that sets no max_tokens (default 16)",
    )
    add(
        "--kv-events-endpoint",
        metavar="tcp://HOST:PORT",
        help="publish KV-cache events (vLLM's ZMQ format) on this endpoint (default: off)",
    )
    add("--kv-events-connect", action="store_true", help="connect to the KV-events endpoint instead of binding it")
    add("--kv-events-map-format", action="store_true", help="encode KV events as maps instead of arrays")
    add(
        "--data-parallel-size",
        type=int,
        default=1,
        help="engines behind the port, as vLLM's data parallelism: each has its own KV cache, publishes its KV "
        'events on the endpoint\'s port + its rank and its metrics under engine="<rank>"; a request goes to '
        "the rank of its X-data-parallel-rank header, else to the least loaded (default 1)",
    )
    add(
        "--kv-cache-groups",
        nargs="+",
        default=[],
        metavar="KIND[:WINDOW]",
        help="publish KV events as a hybrid model with these KV-cache groups, e.g. full_attention "
        "sliding_window:64 (group 0 must be full_attention; default: one group, no group fields)",
    )
    add("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log level")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The server configuration the flags describe; raises ValueError for values out of range."""
    overrides = {name: getattr(args, name) for name in _PROFILE_OVERRIDES if getattr(args, name) is not None}
    for name, value in overrides.items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.time_scale < float("inf"):
        raise ValueError("--time-scale must be a positive number")
    if not 0 <= args.failure_injection_rate <= 100:
        raise ValueError("--failure-injection-rate is a percentage (0..100)")
    threshold = args.global_cache_hit_threshold
    if threshold is not None and not 0 <= threshold <= 1:
        raise ValueError("--global-cache-hit-threshold must be between 0 and 1")
    if args.default_max_tokens < 1:
        raise ValueError("--default-max-tokens must be at least 1")
    if not 0 < args.port < 65536:
        raise ValueError("--port must be between 1 and 65535")
    if not 1 <= args.data_parallel_size <= 64:
        raise ValueError("--data-parallel-size must be between 1 and 64")
    groups = tuple(KVCacheGroup.parse(text) for text in args.kv_cache_groups)
    if groups and groups[0].kind != "full_attention":
        raise ValueError("--kv-cache-groups: group 0 must be full_attention")
    return ServerConfig(
        host=args.host,
        port=args.port,
        profile=get_profile(args.profile).with_overrides(**overrides),
        model=args.model,
        served_model_names=tuple(args.served_model_name),
        lora_modules=tuple(args.lora_modules),
        role=args.role,
        time_scale=args.time_scale,
        seed=args.seed,
        default_max_tokens=args.default_max_tokens,
        global_cache_hit_threshold=threshold,
        failure_injection_rate=args.failure_injection_rate,
        failure_types=tuple(args.failure_types),
        pod_name=args.pod_name,
        namespace=args.namespace,
        kv_events_endpoint=args.kv_events_endpoint,
        kv_events_connect=args.kv_events_connect,
        kv_events_map_format=args.kv_events_map_format,
        data_parallel_size=args.data_parallel_size,
        kv_cache_groups=groups,
    )


def _run_serve(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        args.parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported here so that `kvroute sim --help` stays fast.
    import prometheus_client

    from kvroute.simulator.server.app import serve

    # No `_created` series: nothing that reads vLLM's metrics uses them (the function is unannotated).
    disable_created_series: Callable[[], None] = prometheus_client.disable_created_metrics
    disable_created_series()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
    return 0
