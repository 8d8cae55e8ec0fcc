"""Record golden KV-event messages and metric expositions from the real upstream code (vLLM, SGLang).

    python scripts/golden/record_upstream.py [--vllm 0.34.0] [--sglang 0.5.23] [--out tests/fixtures/upstream]

1. `pip download --no-deps` the two wheels into ~/.cache/kvroute/wheels (skipped when already there). Nothing is
   installed: files are read out of the wheels (zip files).
2. KV events: vLLM's `vllm/distributed/kv_events.py` is executed with small stubs for the vLLM modules it imports
   (config, logger, network helpers); its own `ZmqEventPublisher` (one per data-parallel rank, with its own
   `offset_endpoint_port`) publishes batches built from its own event classes (`BlockStored`, `BlockRemoved`,
   `AllBlocksCleared`, `KVEventBatch`) over loopback ZMQ to SUB sockets connected here to the base port and to
   the base port + rank (the publishers bind `tcp://*:<base>`). The frames received are written, base64, with
   the port offset they arrived on, to `vllm-<version>/kv_events/<scenario>.json`, next to the upstream events
   as msgspec renders them to builtins.
3. Metrics: vLLM's `PrometheusStatLogger` (`vllm/v1/metrics/loggers.py`) is instantiated with stubbed config for
   one and for two engines, its scheduler gauges set and `cache_config_info` logged; SGLang's
   `SchedulerMetricsCollector` (`sglang/srt/observability/metrics_collector.py`) the same for data-parallel ranks
   0 and 1. The expositions (`prometheus_client.generate_latest`) are written to `<engine>-<version>/metrics/*.txt`
   with the values set in `values.json`.

Needs `msgspec`, `pyzmq` and `prometheus_client` (all in the dev environment). See tests/fixtures/upstream/README.md.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import logging
import socket
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))

from upstream_stubs import Wheel, load

ROOT = Path(__file__).resolve().parents[2]
WHEELS = Path.home() / ".cache" / "kvroute" / "wheels"
TOPIC = "kv@127.0.0.1:8000@meta-llama/Llama-3.1-8B-Instruct"
TS = 1_767_225_600.25  # fixed timestamps, so a re-recording differs only where upstream changed


def wheel(project: str, version: str, wheels: Path) -> Wheel:
    found = sorted(wheels.glob(f"{project}-{version}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", f"{project}=={version}", "-d", str(wheels)],
            check=True,
        )
        found = sorted(wheels.glob(f"{project}-{version}-*.whl"))
    return Wheel(found[0])


# KV events -------------------------------------------------------------------------------------------------------


def load_kv_events(vllm: Wheel) -> types.ModuleType:
    @dataclasses.dataclass
    class KVEventsConfig:  # the fields vLLM's publisher reads back; the real one is a pydantic config class
        enable_kv_cache_events: bool = False
        publisher: str = "null"
        endpoint: str = "tcp://*:5557"
        replay_endpoint: str | None = None
        buffer_steps: int = 10_000
        hwm: int = 100_000
        max_queue_size: int = 100_000
        topic: str = ""

    def tcp_uri(ip: str, port: int) -> str:
        return f"tcp://[{ip}]:{port}" if ":" in ip else f"tcp://{ip}:{port}"

    return load(
        vllm,
        "vllm.distributed.kv_events",
        overrides={
            "vllm.config.kv_events": {"KVEventsConfig": KVEventsConfig},
            "vllm.logger": {"init_logger": logging.getLogger},
            "vllm.utils.network_utils": {
                "get_ip": lambda: "127.0.0.1",
                "get_tcp_uri": tcp_uri,
                "is_valid_ipv6_address": lambda ip: ":" in ip,
                "split_zmq_path": lambda path: tuple(path.rsplit(":", 2)),
            },
            "vllm.v1.core.kv_cache_utils": {"ExternalBlockHash": bytes | int},
        },
    )


def scenarios(kv: types.ModuleType) -> dict[str, list[tuple[int, list[Any]]]]:
    """Batches (data-parallel rank, events) per scenario, built with vLLM's own event classes."""

    def stored(hashes: list[Any], parent: Any, tokens: range, size: int, **more: Any) -> Any:
        fields: dict[str, Any] = {"lora_id": None, "medium": "GPU", "lora_name": None}
        fields.update(more)
        return kv.BlockStored(
            block_hashes=hashes, parent_block_hash=parent, token_ids=list(tokens), block_size=size, **fields
        )

    def removed(hashes: list[Any], **more: Any) -> Any:
        return kv.BlockRemoved(block_hashes=hashes, medium="GPU", **more)

    full = {"group_idx": 0, "kv_cache_spec_kind": "full_attention"}
    sliding = {"group_idx": 1, "kv_cache_spec_kind": "sliding_window", "kv_cache_spec_sliding_window": 8}
    sha = [bytes([n]) * 32 for n in (1, 2, 3)]  # sha256-style hashes, as `--prefix-caching-hash-algo sha256` sends
    return {
        # Integer hashes, unsigned and one above 2^63; then removal and clear.
        "int_hashes": [
            (0, [stored([101, 102, (1 << 64) - 5], None, range(1, 13), 4, **full)]),
            (0, [removed([(1 << 64) - 5], group_idx=0)]),
            (0, [kv.AllBlocksCleared()]),
        ],
        "bytes_hashes": [
            (0, [stored(sha[:2], None, range(1, 9), 4, **full), stored(sha[2:], sha[1], range(9, 13), 4, **full)]),
            (0, [removed(sha[2:], group_idx=0)]),
        ],
        "lora": [
            (
                0,
                [
                    stored(
                        [301, 302],
                        None,
                        range(1, 9),
                        4,
                        lora_id=1,
                        lora_name="sql-lora",
                        extra_keys=[("sql-lora",), ("sql-lora",)],
                        **full,
                    )
                ],
            ),
        ],
        # Two data-parallel ranks of one server: same topic, each its own sequence; the same prompt (same
        # hashes) cached on both; rank 1 then evicts its copy.
        "dp_ranks": [
            (0, [stored([101, 102, 103], None, range(1, 13), 4, **full)]),
            (1, [stored([101, 102, 103], None, range(1, 13), 4, **full)]),
            (1, [stored([201], None, range(50, 54), 4, **full)]),
            (1, [removed([101, 102, 103], group_idx=0)]),
        ],
        # A hybrid model: the same hashes for the full-attention group 0 and the sliding-window group 1; the
        # sliding window then frees its blocks.
        "hybrid_groups": [
            (
                0,
                [
                    stored([101, 102, 103], None, range(1, 13), 4, **full),
                    stored([101, 102, 103], None, range(1, 13), 4, **sliding),
                ],
            ),
            (0, [removed([101, 102], group_idx=1)]),
        ],
        # Groups of different block sizes (full attention 4, Mamba 12); the Mamba group's event comes last.
        "hybrid_block_sizes": [
            (
                0,
                [
                    stored([101, 102, 103], None, range(1, 13), 4, **full),
                    stored([401], None, range(1, 13), 12, group_idx=1, kv_cache_spec_kind="mamba"),
                ],
            ),
        ],
        # Fine-grained prefix caching: a group of block size 8 hashed every 4 tokens caches a partial entry
        # (`BlockPool.cache_partial_block`): one hash, the last 4 tokens, block_size 4.
        "partial_block": [
            (0, [stored([501], None, range(1, 9), 8, **full)]),
            (0, [stored([502], 501, range(9, 13), 4, **full)]),
        ],
    }


def free_port_pair() -> int:
    while True:
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)


def record_kv_events(kv: types.ModuleType, out: Path) -> None:
    import msgspec
    import zmq

    out.mkdir(parents=True, exist_ok=True)
    context = zmq.Context.instance()
    for name, batches in scenarios(kv).items():
        base = free_port_pair()
        ranks = sorted({rank for rank, _ in batches})
        subs = []
        for _rank in range(max(ranks) + 1):
            sub = context.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            subs.append(sub)
        # The engines bind (an endpoint with `*`); vLLM offsets the port by the rank.
        publishers = {
            rank: kv.ZmqEventPublisher(data_parallel_rank=rank, endpoint=f"tcp://*:{base}", topic=TOPIC)
            for rank in ranks
        }
        for offset, sub in enumerate(subs):
            sub.connect(f"tcp://127.0.0.1:{base + offset}")
        time.sleep(0.5)  # ZMQ's slow joiner
        poller = zmq.Poller()
        for sub in subs:
            poller.register(sub, zmq.POLLIN)
        messages = []
        for index, (rank, events) in enumerate(batches):
            publishers[rank].publish(kv.KVEventBatch(ts=TS + index, events=events))
            received = dict(poller.poll(5000))
            sub = next(s for s in subs if s in received)
            frames = sub.recv_multipart()
            messages.append(
                {
                    "port_offset": subs.index(sub),
                    "data_parallel_rank": rank,
                    "frames": [base64.b64encode(f).decode() for f in frames],
                    "upstream": msgspec.to_builtins(
                        kv.KVEventBatch(ts=TS + index, events=events, data_parallel_rank=rank)
                    ),
                }
            )
        for publisher in publishers.values():
            publisher.shutdown()
        for sub in subs:
            sub.close(linger=0)
        document = {
            "scenario": name,
            "topic": TOPIC,
            "endpoints": {
                f"rank {rank}": {
                    "configured bind tcp://*:5557": kv.ZmqEventPublisher.offset_endpoint_port("tcp://*:5557", rank),
                    "configured connect tcp://router:5557": kv.ZmqEventPublisher.offset_endpoint_port(
                        "tcp://router:5557", rank
                    ),
                }
                for rank in ranks
            },
            "messages": messages,
        }
        (out / f"{name}.json").write_text(json.dumps(document, indent=1, default=_bytes_hex) + "\n")
        print(f"kv events {name}: {len(messages)} messages")


def _bytes_hex(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


# Metrics ---------------------------------------------------------------------------------------------------------


def _reset_registry() -> None:
    from prometheus_client import REGISTRY

    for collector in list(REGISTRY._collector_to_names):
        REGISTRY.unregister(collector)


def _exposition() -> str:
    from prometheus_client import REGISTRY, generate_latest

    return generate_latest(REGISTRY).decode()


VLLM_VALUES = {  # per engine: waiting, running, kv usage
    "0": {"waiting": 2, "running": 3, "kv_usage": 0.25},
    "1": {"waiting": 7, "running": 5, "kv_usage": 0.9},
}
CACHE_INFO = {
    "block_size": "16",
    "num_gpu_blocks": "8192",
    "num_cpu_blocks": "None",
    "cache_dtype": "auto",
    "enable_prefix_caching": "True",
    "gpu_memory_utilization": "0.9",
    "prefix_caching_hash_algo": "sha256",
}


def record_vllm_metrics(vllm: Wheel, out: Path) -> None:
    real = ["vllm.v1.metrics.utils", "vllm.v1.metrics.buckets", "vllm.v1.metrics.cache_hit_source"]
    for engines in (["0"], ["0", "1"]):
        _reset_registry()
        loggers = load(
            vllm,
            "vllm.v1.metrics.loggers",
            real=real,
            overrides={
                "vllm.logger": {"init_logger": logging.getLogger},
                "vllm.v1.metrics.prometheus": {"unregister_vllm_metrics": lambda: None},
            },
        )
        config = mock.MagicMock(name="VllmConfig")
        config.model_config.served_model_name = "meta-llama/Llama-3.1-8B-Instruct"
        config.model_config.max_model_len = 8192
        config.model_config.is_diffusion = False
        config.observability_config.show_hidden_metrics = False
        config.observability_config.kv_cache_metrics = False
        config.observability_config.custom_histogram_buckets = None
        config.lora_config = None
        config.speculative_config = None
        logger = loggers.PrometheusStatLogger(config, engine_indexes=[int(e) for e in engines])
        for engine in engines:
            values = VLLM_VALUES[engine]
            logger.gauge_scheduler_waiting[int(engine)].set(values["waiting"])
            logger.gauge_scheduler_running[int(engine)].set(values["running"])
            logger.gauge_kv_cache_usage[int(engine)].set(values["kv_usage"])
        cache_config = types.SimpleNamespace(metrics_info=lambda: dict(CACHE_INFO))
        logger.log_metrics_info("cache_config", cache_config)
        name = "dp2" if len(engines) == 2 else "dp1"
        _write(out / f"{name}.txt", _exposition())
        _write_json(out / f"{name}.values.json", {e: VLLM_VALUES[e] for e in engines} | {"cache_config": CACHE_INFO})
        print(f"vllm metrics {name}")


SGLANG_VALUES = {  # per dp rank
    "0": {"num_queue_reqs": 2, "num_running_reqs": 3, "token_usage": 0.25, "cache_hit_rate": 0.5},
    "1": {"num_queue_reqs": 7, "num_running_reqs": 5, "token_usage": 0.9, "cache_hit_rate": 0.1},
}
SGLANG_CONFIG = {"page_size": 64, "num_pages": 2048}


def record_sglang_metrics(sglang: Wheel, out: Path) -> None:
    _reset_registry()
    schedule = types.SimpleNamespace(  # SGLang's scheduling options the collector reads (its defaults)
        prefill_delayer_max_delay_passes=30,
        prefill_delayer_forward_passes_buckets=None,
        prefill_delayer_wait_seconds_buckets=None,
    )
    collector_module = load(
        sglang,
        "sglang.srt.observability.metrics_collector",
        real=["sglang.srt.observability.utils"],
        overrides={
            "sglang.srt.utils": {"get_bool_env_var": lambda *args, **kwargs: False},
            "sglang.srt.runtime_context": {"get_schedule": lambda: schedule},
        },
    )
    base = {
        "model_name": "meta-llama/Llama-3.1-8B-Instruct",
        "engine_type": "unified",
        "tp_rank": 0,
        "pp_rank": 0,
        "moe_ep_rank": 0,
    }
    collector = collector_module.SchedulerMetricsCollector(
        labels=base | {"dp_rank": 0}, server_args=mock.MagicMock(name="ServerArgs")
    )
    for rank, values in SGLANG_VALUES.items():
        collector.labels = base | {"dp_rank": int(rank)}  # one scheduler process per rank; shared registry here
        for name, value in values.items():
            collector._log_gauge(getattr(collector, name), value)
        collector._log_gauge(collector.page_size, SGLANG_CONFIG["page_size"])
        collector._log_gauge(collector.num_pages, SGLANG_CONFIG["num_pages"])
    _write(out / "dp2.txt", _exposition())
    _write_json(out / "dp2.values.json", SGLANG_VALUES | {"config": SGLANG_CONFIG})
    print("sglang metrics dp2")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _write_json(path: Path, value: Any) -> None:
    _write(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm", default="0.34.0")
    parser.add_argument("--sglang", default="0.5.23")
    parser.add_argument("--wheels", type=Path, default=WHEELS)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "upstream")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    vllm = wheel("vllm", args.vllm, args.wheels)
    sglang = wheel("sglang", args.sglang, args.wheels)
    steps: list[Callable[[], None]] = [
        lambda: record_kv_events(load_kv_events(vllm), args.out / f"vllm-{args.vllm}" / "kv_events"),
        lambda: record_vllm_metrics(vllm, args.out / f"vllm-{args.vllm}" / "metrics"),
        lambda: record_sglang_metrics(sglang, args.out / f"sglang-{args.sglang}" / "metrics"),
    ]
    for step in steps:
        step()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
