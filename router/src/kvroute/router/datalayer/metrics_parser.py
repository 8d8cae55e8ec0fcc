"""Read the few metric families the router needs out of a Prometheus text exposition.

This runs for every endpoint every 50 ms, so it does not tokenize the whole exposition: for each family it needs
it searches the text for the family name at the start of a line (`str.find`, in C) and parses only those sample
lines; everything else (HELP/TYPE comments, histograms, counters) is never looked at.

Per engine (selected by the endpoint's `inference.networking.k8s.io/engine-type` label, as in GIE):

- vllm: `vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` (or, from older
  servers, `vllm:gpu_cache_usage_perc`), `vllm:lora_requests_info{max_lora,running_lora_adapters,
  waiting_lora_adapters}`, `vllm:cache_config_info{block_size,num_gpu_blocks}`.
- sglang: `sglang:num_queue_reqs`, `sglang:num_running_reqs`, `sglang:token_usage`,
  `sglang:cache_config_info{page_size,num_pages}`.
- trtllm (also `trtllm-serve`): `trtllm_num_requests_waiting`, `trtllm_num_requests_running`,
  `trtllm_kv_cache_utilization`, and the gauges `trtllm_kv_cache_tokens_per_block` (block size) and
  `trtllm_kv_cache_max_blocks` (number of blocks).

When a family has several series the first one is used (GIE picks the newest exposition timestamp, and timestamps
are normally absent), except for `vllm:lora_requests_info`, whose value is the time of the reading: the series
with the largest value wins, and its `max_lora`, `running_lora_adapters` and `waiting_lora_adapters` (comma
lists) labels are read. Non-finite or unparseable values count as absent; counts are floored at 0 and
`kv_usage` is clamped to [0, 1]. Nothing here raises on bad input: what cannot be read is simply absent.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from kvroute.router.framework.endpoint import EndpointMetrics, LoraInfo


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """Where one engine type reports each field; info families carry their numbers in labels."""

    name: str
    waiting: str
    running: str
    kv_usage: tuple[str, ...]  # first family present wins
    lora_info: str | None = None
    cache_info: str | None = None
    cache_info_block_size_label: str = ""
    cache_info_num_blocks_label: str = ""
    block_size_gauge: str | None = None
    num_blocks_gauge: str | None = None


ENGINES: dict[str, EngineSpec] = {
    "vllm": EngineSpec(
        name="vllm",
        waiting="vllm:num_requests_waiting",
        running="vllm:num_requests_running",
        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        lora_info="vllm:lora_requests_info",
        cache_info="vllm:cache_config_info",
        cache_info_block_size_label="block_size",
        cache_info_num_blocks_label="num_gpu_blocks",
    ),
    "sglang": EngineSpec(
        name="sglang",
        waiting="sglang:num_queue_reqs",
        running="sglang:num_running_reqs",
        kv_usage=("sglang:token_usage",),
        cache_info="sglang:cache_config_info",
        cache_info_block_size_label="page_size",
        cache_info_num_blocks_label="num_pages",
    ),
    "trtllm": EngineSpec(
        name="trtllm",
        waiting="trtllm_num_requests_waiting",
        running="trtllm_num_requests_running",
        kv_usage=("trtllm_kv_cache_utilization",),
        block_size_gauge="trtllm_kv_cache_tokens_per_block",
        num_blocks_gauge="trtllm_kv_cache_max_blocks",
    ),
}
ENGINES["trtllm-serve"] = ENGINES["trtllm"]  # the engine-type label value GIE uses for the same server

# After the family name: optional `{labels}` (quoted values may hold `}` `,` and escapes), then the value.
_SAMPLE_REST = re.compile(r'(?:\{((?:[^"}]|"(?:[^"\\\n]|\\.)*")*)\})?[ \t]+(\S+)')
_LABEL_PAIR = re.compile(r'[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*,?')
_UNESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "\\": "\\", '"': '"'}


@dataclass(frozen=True, slots=True)
class ParsedMetrics:
    """What one exposition said; `None` means the family was absent or unreadable."""

    waiting: int | None = None
    running: int | None = None
    kv_usage: float | None = None
    lora: LoraInfo | None = None
    block_size: int | None = None
    num_gpu_blocks: int | None = None

    @property
    def has_load(self) -> bool:
        """True when at least one of waiting, running and kv_usage was read: the scrape is usable."""
        return self.waiting is not None or self.running is not None or self.kv_usage is not None

    def apply(self, previous: EndpointMetrics, scraped_at: float) -> EndpointMetrics:
        """Fresh metrics: the fields read here, the previous values for fields this exposition lacked."""
        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        return dataclasses.replace(previous, **changes, scraped_at=scraped_at, stale=False)


def parse_metrics(text: str, engine: EngineSpec) -> ParsedMetrics:
    waiting = _first_value(text, engine.waiting)
    running = _first_value(text, engine.running)
    kv_usage = None
    for family in engine.kv_usage:
        kv_usage = _first_value(text, family)
        if kv_usage is not None:
            break
    block_size = num_blocks = None
    if engine.cache_info is not None:
        labels = _first_labels(text, engine.cache_info)
        if labels is not None:
            block_size = _int_label(labels, engine.cache_info_block_size_label)
            num_blocks = _int_label(labels, engine.cache_info_num_blocks_label)
    if engine.block_size_gauge is not None:
        block_size = _count(_first_value(text, engine.block_size_gauge))
    if engine.num_blocks_gauge is not None:
        num_blocks = _count(_first_value(text, engine.num_blocks_gauge))
    return ParsedMetrics(
        waiting=_count(waiting),
        running=_count(running),
        kv_usage=None if kv_usage is None else min(1.0, max(0.0, kv_usage)),
        lora=_lora(text, engine.lora_info) if engine.lora_info is not None else None,
        block_size=block_size,
        num_gpu_blocks=num_blocks,
    )


def _samples(text: str, family: str) -> Iterator[tuple[str | None, float]]:
    """(raw label text, value) of each readable sample line of `family`, in exposition order."""
    needle = "\n" + family
    found = text.find(needle)
    name_at = 0 if text.startswith(family) else (found + 1 if found != -1 else -1)
    while name_at != -1:
        name_end = name_at + len(family)
        line_end = text.find("\n", name_end)
        rest = text[name_end : line_end if line_end != -1 else len(text)]
        # A longer family sharing this prefix (`..._total`, `..._bucket`) is a different family: skip it.
        if rest[:1] in ("{", " ", "\t"):
            match = _SAMPLE_REST.match(rest)
            if match is not None:
                value = _float(match.group(2))
                if value is not None:
                    yield match.group(1), value
        if line_end == -1:
            return
        found = text.find(needle, line_end)
        name_at = found + 1 if found != -1 else -1


def _first_value(text: str, family: str) -> float | None:
    return next((value for _, value in _samples(text, family)), None)


def _first_labels(text: str, family: str) -> dict[str, str] | None:
    return next((_labels(raw) for raw, _ in _samples(text, family)), None)


def _lora(text: str, family: str) -> LoraInfo | None:
    best: tuple[float, str | None] | None = None
    for raw, value in _samples(text, family):
        if best is None or value > best[0]:
            best = (value, raw)
    if best is None:
        return None
    labels = _labels(best[1])
    return LoraInfo(
        max_loras=_int_label(labels, "max_lora") or 0,
        running=_adapters(labels.get("running_lora_adapters", "")),
        waiting=_adapters(labels.get("waiting_lora_adapters", "")),
    )


def _labels(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    return {m.group(1): _UNESCAPE.sub(_unescape_one, m.group(2)) for m in _LABEL_PAIR.finditer(raw)}


def _unescape_one(match: re.Match[str]) -> str:
    char = match.group(1)
    return _ESCAPES.get(char, "\\" + char)


def _adapters(value: str) -> tuple[str, ...]:
    return tuple(name for name in (part.strip() for part in value.split(",")) if name)


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _count(value: float | None) -> int | None:
    return None if value is None else max(0, int(value))


def _int_label(labels: dict[str, str], name: str) -> int | None:
    value = _float(labels.get(name, ""))
    return None if value is None else _count(value)
