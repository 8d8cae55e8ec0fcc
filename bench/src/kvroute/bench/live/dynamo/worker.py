"""A Dynamo worker in front of one `kvroute sim serve`: Dynamo's router routes to it as to any engine it runs.

Run by the Dynamo venv's interpreter (it imports only the standard library and what ai-dynamo installs, never
kvroute). One process per simulator:

- registers the model (`ModelInput.Tokens`, chat and completions) from the model directory, with the
  simulator's KV-cache size and context length read from its `/metrics` and `/v1/models`;
- serves the `generate` endpoint: Dynamo's preprocessed request (prompt token ids, `max_tokens`) becomes a
  streamed `POST /v1/completions` with `"prompt": <token ids>`; every text chunk the simulator streams becomes one
  output token (the model directory gives each of the simulator's output words one id), the last carries the
  finish reason and the usage. A simulator error status becomes Dynamo's `HttpError` with that status;
- relays KV events: Dynamo's `KvEventPublisher` subscribes to the simulator's ZMQ socket, which publishes vLLM's
  format, and forwards the events on Dynamo's event plane exactly as it does for a vLLM engine (the router hashes
  the events' token ids with its own block hash, so no hash translation happens here);
- publishes load: `vllm:kv_cache_usage_perc` x the cache's blocks as `kv_used_blocks`, every `--load-interval`.

SIGTERM or SIGINT shuts the worker's Dynamo runtime down (the worker leaves discovery) and exits 0, also while it
still waits for its simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from dynamo.llm import (
    HttpError,
    KvEventPublisher,
    ModelInput,
    ModelRuntimeConfig,
    ModelType,
    WorkerMetricsPublisher,
    WorkerType,
    register_model,
)
from dynamo.runtime import DistributedRuntime
from tokenizers import Tokenizer

log = logging.getLogger("kvroute.dynamo.worker")

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--sim-url", required=True, help="the simulator's base URL, e.g. http://127.0.0.2:8000")
    add("--kv-events", required=True, help="the simulator's KV-events endpoint, e.g. tcp://127.0.0.2:5557")
    add("--model-name", required=True, help="the model name clients send (the simulator's served name)")
    add("--model-dir", required=True, help="the model directory to register (config and tokenizer)")
    add("--block-size", type=int, default=16, help="tokens per KV block; must be the simulator's (default 16)")
    add("--namespace", default="kvroute", help="Dynamo namespace (default kvroute)")
    add("--component", default="backend", help="Dynamo component (default backend)")
    add("--endpoint", default="generate", help="Dynamo endpoint name (default generate)")
    add("--load-interval", type=float, default=0.25, help="seconds between load reports (default 0.25)")
    add("--sim-timeout", type=float, default=30.0, help="seconds to wait for the simulator to answer (default 30)")
    add("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser.parse_args(argv)


def prometheus_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in a Prometheus text exposition."""
    samples = []
    for match in _SAMPLE.finditer(text):
        labels = dict(_LABEL.findall(match["labels"] or ""))
        with contextlib.suppress(ValueError):
            samples.append((match["name"], labels, float(match["value"])))
    return samples


class OutputTokens:
    """Maps the simulator's streamed text chunks to token ids of the model directory's tokenizer: one id for each
    of the simulator's output words (the vocabulary has them as single tokens), byte tokens for any other text."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            ids = self._ids[text] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids


class SimulatorEngine:
    """Serves Dynamo's `generate` by streaming from one simulator."""

    def __init__(self, session: aiohttp.ClientSession, sim_url: str, model: str, tokens: OutputTokens) -> None:
        self._session = session
        self._url = f"{sim_url}/v1/completions"
        self._model = model
        self._tokens = tokens

    async def generate(self, request: dict[str, Any], context: Any) -> AsyncIterator[dict[str, Any]]:
        prompt = list(request["token_ids"])
        body: dict[str, Any] = {
            "model": self._model,
            "prompt": prompt,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        max_tokens = (request.get("stop_conditions") or {}).get("max_tokens")
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        generated, finish, last, cached = 0, None, [], None
        try:
            async with self._session.post(self._url, json=body) as response:
                if response.status >= 400:
                    raise HttpError(response.status, _error_message(await response.text()))
                async for event in _sse_events(response.content):
                    usage = event.get("usage")
                    if usage:
                        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                    for choice in event.get("choices") or ():
                        text = choice.get("text") or ""
                        ids = self._tokens.ids(text) if text else []
                        generated += len(ids)
                        if choice.get("finish_reason") is not None:
                            # Held back until the usage chunk that follows, so the last token carries both.
                            finish, last = choice["finish_reason"], ids
                        elif ids:
                            yield {"token_ids": ids}
                    if context.is_stopped():
                        return
        except (aiohttp.ClientError, json.JSONDecodeError) as exc:
            raise HttpError(502, f"the simulator at {self._url} failed: {exc!r}") from exc
        if finish is None:
            raise HttpError(502, f"the simulator at {self._url} ended the stream without a finish reason")
        yield {
            "token_ids": last,
            "finish_reason": finish,
            "completion_usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": generated,
                "total_tokens": len(prompt) + generated,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }


async def _sse_events(stream: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    async for raw in stream:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        yield json.loads(data)


def _error_message(text: str) -> str:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return str(json.loads(text)["error"]["message"])
    return text[:500]


async def simulator_capacity(session: aiohttp.ClientSession, sim_url: str, timeout: float) -> tuple[int, int, int]:
    """(KV blocks, block size, max model length) of the simulator, waiting up to `timeout` seconds for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with session.get(f"{sim_url}/metrics", timeout=aiohttp.ClientTimeout(total=2)) as response:
                response.raise_for_status()
                samples = prometheus_samples(await response.text())
            async with session.get(f"{sim_url}/v1/models", timeout=aiohttp.ClientTimeout(total=2)) as response:
                response.raise_for_status()
                models = await response.json()
        except (aiohttp.ClientError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        info = next(labels for name, labels, _ in samples if name == "vllm:cache_config_info")
        return int(info["num_gpu_blocks"]), int(info["block_size"]), int(models["data"][0]["max_model_len"])


async def publish_load(
    session: aiohttp.ClientSession, sim_url: str, publisher: WorkerMetricsPublisher, blocks: int, interval: float
) -> None:
    """Report the simulator's KV blocks in use, as vLLM workers do from their scheduler stats."""
    while True:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{sim_url}/metrics", timeout=aiohttp.ClientTimeout(total=2)) as response:
                samples = prometheus_samples(await response.text())
            usage = next((value for name, _, value in samples if name == "vllm:kv_cache_usage_perc"), 0.0)
            publisher.publish(0, kv_used_blocks=round(usage * blocks))
        await asyncio.sleep(interval)


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    runtime = DistributedRuntime(
        loop,
        os.environ.get("DYN_DISCOVERY_BACKEND", "file"),
        os.environ.get("DYN_REQUEST_PLANE", "tcp"),
        event_plane=os.environ.get("DYN_EVENT_PLANE", "zmq"),
    )
    startup = asyncio.current_task()

    def stop() -> None:
        runtime.shutdown()  # ends serve_endpoint once in-flight requests are done
        if startup is not None and not serving:
            startup.cancel()  # still waiting for the simulator or registering

    serving = False
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    endpoint = runtime.endpoint(f"{args.namespace}.{args.component}.{args.endpoint}")
    sim_url = args.sim_url.rstrip("/")
    tokens = OutputTokens(Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json")))
    # Unbounded total: a long generation streams for as long as it takes; the connect step is bounded.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        blocks, block_size, max_model_len = await simulator_capacity(session, sim_url, args.sim_timeout)
        if block_size != args.block_size:
            raise SystemExit(f"the simulator's block size is {block_size}, not --block-size {args.block_size}")
        kv_events = KvEventPublisher(
            endpoint=endpoint, kv_block_size=args.block_size, zmq_endpoint=args.kv_events, zmq_topic=""
        )
        load = WorkerMetricsPublisher()
        await load.create_endpoint(endpoint)
        load.publish(0, kv_used_blocks=0)
        runtime_config = ModelRuntimeConfig()
        runtime_config.total_kv_blocks = blocks
        runtime_config.context_length = max_model_len
        runtime_config.kv_event_publishing_enabled = True
        engine = SimulatorEngine(session, sim_url, args.model_name, tokens)
        await register_model(
            ModelInput.Tokens,
            ModelType.Chat | ModelType.Completions,
            endpoint,
            args.model_dir,
            args.model_name,
            worker_type=WorkerType.Aggregated,
            kv_cache_block_size=args.block_size,
            runtime_config=runtime_config,
        )
        reporter = asyncio.create_task(publish_load(session, sim_url, load, blocks, args.load_interval))
        # The system status server's /health (when DYN_SYSTEM_PORT is set) turns 200 from here on.
        runtime.set_health_status(True)
        log.info("worker %d serving %s with %d KV blocks", endpoint.connection_id(), sim_url, blocks)
        serving = True
        try:
            await endpoint.serve_endpoint(engine.generate, graceful_shutdown=True)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            kv_events.shutdown()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(asyncio.CancelledError):  # stopped before it served
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
