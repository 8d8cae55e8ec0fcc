"""Trace replay: the requests of a JSONL trace, one request per line, for a `trace` generator.

Two formats (`format: auto` tells them apart by the `hash_ids` field of each line):

- Mooncake (FAST'25): `{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}`. Each
  hash id stands for one block of `BLOCK_TOKENS` (512) tokens of synthetic text drawn from `"block:<id>"`, the
  same wherever the id appears, so requests with equal hash-id prefixes have equal token prefixes. The prompt is
  the blocks end to end, cut to `input_length` tokens (the last block is usually partial); ids beyond that are
  ignored, too few ids for `input_length` is an error.
- Plain: `{"timestamp": s, "prompt": "...", "max_tokens": m}`, or `"timestamp_ms"` in milliseconds instead,
  and `"messages": [{"role", "content"}, ...]` (rendered with the simulator tokenizer's chat template) instead
  of `"prompt"`.

Options, in this order: `window: [start, end)` keeps the requests whose trace time (seconds) falls in it and
shifts times by `start`; `speed` divides times (2: twice as fast); `max_context` clips input + output to the
model's context: the output to at most half of it, then the input to the rest, keeping the *front* of the
prompt (its shared prefix). Requests are numbered `req-<n>` in time order (ties: line order). Any bad line is an
error naming `file:line` and the field.

`python -m kvroute.bench.quality.traces bench/traces` writes the sample traces (`write_samples`): a
Mooncake-format trace of chat-style sessions whose hash-id chains grow turn by turn on a few shared system
prompts, and a plain trace mixing prompts and chat messages.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kvroute.bench.quality.generators import text
from kvroute.bench.quality.workloads import FleetSpec, TraceSpec, WorkloadError, WorkloadSpec
from kvroute.router.config.errors import validation_messages
from kvroute.simulator.des.harness import WorkloadRequest
from kvroute.simulator.tokenizer import Tokenizer

BLOCK_TOKENS = 512


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MooncakeLine(_Line):
    timestamp: float = Field(ge=0, description="milliseconds")
    input_length: int = Field(ge=1)
    output_length: int = Field(ge=1)
    hash_ids: list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> MooncakeLine:
        if self.input_length > BLOCK_TOKENS * len(self.hash_ids):
            needed = -(-self.input_length // BLOCK_TOKENS)
            raise ValueError(f"input_length {self.input_length} needs {needed} hash_ids, got {len(self.hash_ids)}")
        return self


class Message(_Line):
    role: str
    content: str


class PlainLine(_Line):
    timestamp: float | None = Field(default=None, ge=0, description="seconds")
    timestamp_ms: float | None = Field(default=None, ge=0)
    prompt: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    max_tokens: int = Field(ge=1)

    @model_validator(mode="after")
    def _check(self) -> PlainLine:
        if (self.timestamp is None) == (self.timestamp_ms is None):
            raise ValueError("give exactly one of timestamp (s) and timestamp_ms")
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


class _Blocks:
    """Synthetic text and token ids of Mooncake blocks, made once per hash id."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._made: dict[int, tuple[str, list[int]]] = {}

    def get(self, hash_id: int) -> tuple[str, list[int]]:
        made = self._made.get(hash_id)
        if made is None:
            block = text(random.Random(f"block:{hash_id}"), BLOCK_TOKENS)
            made = self._made[hash_id] = (block, self._tokenizer.encode(block))
        return made


def _parse(path: Path, number: int, raw: str, format: str) -> MooncakeLine | PlainLine:
    where = f"{path}:{number}"
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise WorkloadError(f"{where}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise WorkloadError(f"{where}: a trace line is an object, not {type(data).__name__}")
    model: type[MooncakeLine | PlainLine]
    if format == "auto":
        model = MooncakeLine if "hash_ids" in data else PlainLine
    else:
        model = MooncakeLine if format == "mooncake" else PlainLine
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise WorkloadError("\n".join(f"{where}: {m}" for m in validation_messages(exc))) from None


def _request(line: MooncakeLine | PlainLine, blocks: _Blocks, tokenizer: Tokenizer) -> tuple[str, list[int], int]:
    if isinstance(line, MooncakeLine):
        needed = line.hash_ids[: -(-line.input_length // BLOCK_TOKENS)]
        made = [blocks.get(h) for h in needed]
        ids = [token for _, block_ids in made for token in block_ids][: line.input_length]
        return "".join(block for block, _ in made), ids, line.output_length
    if line.messages is not None:
        prompt = tokenizer.render_chat([m.model_dump() for m in line.messages])
    else:
        assert line.prompt is not None
        prompt = line.prompt
    return prompt, tokenizer.encode(prompt), line.max_tokens


def replay(spec: TraceSpec, max_model_len: int) -> list[WorkloadRequest]:
    """The trace's requests, clipped to `spec.max_context`, by default `max_model_len`."""
    max_context = spec.max_context or max_model_len
    path = Path(spec.path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise WorkloadError(f"{path}: cannot read: {exc.strerror}") from None
    tokenizer = Tokenizer()
    blocks = _Blocks(tokenizer)
    start, end = spec.window or (0.0, float("inf"))
    kept: list[tuple[float, str, list[int], int]] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        line = _parse(path, number, raw, spec.format)
        if isinstance(line, MooncakeLine):
            at = line.timestamp / 1000
        else:
            at = line.timestamp if line.timestamp is not None else (line.timestamp_ms or 0.0) / 1000
        if not start <= at < end:
            continue
        prompt, ids, output = _request(line, blocks, tokenizer)
        output = min(output, max_context // 2)
        if len(ids) > max_context - output:
            ids = ids[: max_context - output]
            prompt = prompt[: len(ids) * 4]
        kept.append(((at - start) / spec.speed, prompt, ids, output))
    kept.sort(key=lambda item: item[0])
    return [
        WorkloadRequest(f"req-{n:06d}", at, prompt, ids, output) for n, (at, prompt, ids, output) in enumerate(kept)
    ]


def parse_fleet(text: str) -> FleetSpec:
    """`engines=8,profile=llama-3.1-8b-h100,num_gpu_blocks=4000`: fleet fields, and profile fields as overrides."""
    fleet: dict[str, object] = {"engines": 8}
    overrides: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise WorkloadError(f"--fleet: expected key=value, got {item!r}")
        if key == "profile":
            fleet[key] = value
            continue
        try:
            number = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            raise WorkloadError(f"--fleet: {key}: not a number: {value!r}") from None
        if key in FleetSpec.model_fields:
            fleet[key] = number
        else:
            overrides[key] = number
    try:
        spec = FleetSpec.model_validate({**fleet, "overrides": overrides})
    except ValidationError as exc:
        raise WorkloadError("\n".join(f"--fleet: {m}" for m in validation_messages(exc))) from None
    return spec


def trace_workload(path: str, fleet: FleetSpec, **options: object) -> WorkloadSpec:
    """A workload replaying `path` on `fleet`, named after the file; `options` are `TraceSpec` fields."""
    if not Path(path).is_file():
        raise WorkloadError(f"{path}: cannot read: no such file")
    name = re.sub(r"[^a-z0-9]+", "-", Path(path).stem.lower()).strip("-") or "trace"
    generator = TraceSpec.model_validate({"kind": "trace", "path": path, **options})
    return WorkloadSpec(name=name, description=f"replay of {path}", fleet=fleet, generator=generator)


def _mooncake_sample(rng: random.Random) -> list[dict[str, Any]]:
    """The first 1,000 requests of chat sessions on 6 system prompts of 4-10 blocks: a session starts with its
    system prompt and 1,000-6,000 tokens, each of its 3-12 turns adds 300-2,000 tokens (to at most 60 blocks)
    and asks 50-400; sessions arrive at 0.35/s, turns 5-40 s apart."""
    systems = [list(range(k * 100, k * 100 + rng.randint(4, 10))) for k in range(6)]
    rows: list[dict[str, Any]] = []
    start = 0.0
    for session in range(200):
        start += rng.expovariate(0.35)
        system = rng.choice(systems)
        chain = system + list(range(1000 + 100 * session, 1100 + 100 * session))
        at, context = start, len(system) * BLOCK_TOKENS + rng.randint(1000, 6000)
        for _ in range(rng.randint(3, 12)):
            rows.append(
                {
                    "timestamp": round(at * 1000),
                    "input_length": context,
                    "output_length": rng.randint(50, 400),
                    "hash_ids": chain[: -(-context // BLOCK_TOKENS)],
                }
            )
            at += rng.uniform(5, 40)
            context = min(context + rng.randint(300, 2000), 60 * BLOCK_TOKENS)
    rows.sort(key=lambda row: row["timestamp"])
    return rows[:1000]


def _plain_sample(rng: random.Random) -> list[dict[str, Any]]:
    """200 requests at 2/s: half prompts on 4 shared instructions, half 1-3-turn chats on 3 system prompts."""
    instructions = [text(rng, rng.randint(100, 300)) for _ in range(4)]
    systems = [text(rng, rng.randint(100, 400)) for _ in range(3)]
    rows: list[dict[str, Any]] = []
    at = 0.0
    for _ in range(200):
        at += rng.expovariate(2.0)
        row: dict[str, Any] = {"timestamp": round(at, 3)}
        if rng.random() < 0.5:
            row["prompt"] = rng.choice(instructions) + text(rng, rng.randint(20, 150))
        else:
            messages = [{"role": "system", "content": rng.choice(systems)}]
            for _ in range(rng.randint(1, 3)):
                messages += [{"role": "user", "content": text(rng, rng.randint(20, 120))}]
                messages += [{"role": "assistant", "content": text(rng, rng.randint(20, 120))}]
            row["messages"] = messages[:-1]
        row["max_tokens"] = rng.randint(16, 256)
        rows.append(row)
    return rows


SAMPLES = {"sample-mooncake.jsonl": _mooncake_sample, "sample-plain.jsonl": _plain_sample}


def sample_text(name: str) -> str:
    rows = SAMPLES[name](random.Random(name))
    return "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)


def write_samples(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SAMPLES:
        (directory / name).write_text(sample_text(name))
        written.append(directory / name)
    return written


if __name__ == "__main__":
    for written_path in write_samples(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/traces")):
        print(f"wrote {written_path}")
