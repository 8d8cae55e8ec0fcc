"""Read the few metric families the router needs out of a Prometheus text exposition.

This runs for every endpoint up to 20 times a second, so it does not tokenize the whole exposition: for each family
it needs it searches the text for the family name at the start of a line (`str.find`, in C) and parses only those
sample lines; everything else (HELP/TYPE comments, histograms, counters) is never looked at. A family's samples
are one group (the text format requires it), so the search for a family ends with its group: the text is scanned
to its end only for a family that is absent.

Per engine (selected by the endpoint's `inference.networking.k8s.io/engine-type` label, as in GIE):

- vllm: `vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` (or, from older
  servers, `vllm:gpu_cache_usage_perc`), `vllm:lora_requests_info{max_lora,running_lora_adapters,
  waiting_lora_adapters}`, `vllm:cache_config_info{block_size,num_gpu_blocks}`.
- sglang: `sglang:num_queue_reqs`, `sglang:num_running_reqs`, `sglang:token_usage`, and the gauges
  `sglang:page_size` (block size) and `sglang:num_pages` (number of blocks), as SGLang 0.5.23 exports them
  (`sglang:cache_config_info{page_size,num_pages}`, which GIE names, is read when those gauges are absent).
- trtllm (also `trtllm-serve`): `trtllm_num_requests_waiting`, `trtllm_num_requests_running`,
  `trtllm_kv_cache_utilization`, and the gauges `trtllm_kv_cache_tokens_per_block` (block size) and
  `trtllm_kv_cache_max_blocks` (number of blocks).

Data parallelism: an endpoint (one serving port) may front several engines, each exporting its own series: vLLM
labels them `engine="0"`, `"1"`, ... and SGLang `dp_rank="0"`, ... . The endpoint aggregates its engines (it is
one routing target; the server spreads requests over its engines itself):

    waiting = sum over engines          running = sum over engines          num_gpu_blocks = sum over engines
    kv_usage = sum_r usage_r * blocks_r / sum_r blocks_r   (block-weighted mean; plain mean when a count is unknown)
    block_size = the first engine's

so kv_usage is the fraction of the endpoint's KV blocks in use. Several series of one engine (SGLang's `tp_rank`
/ `pp_rank` duplicates with `--enable-metrics-for-all-schedulers`) count once, the first; SGLang's per-priority
breakdowns (`priority` not empty) are skipped, its total being the series with `priority=""`. Other than that,
when a family has several series the first one is used (GIE picks the newest exposition timestamp, and
timestamps are normally absent), except for `vllm:lora_requests_info`, whose value is the time of the reading: the
series with the largest value wins, and its `max_lora`, `running_lora_adapters` and `waiting_lora_adapters`
(comma lists) labels are read. Non-finite or unparseable values count as absent; counts are floored at 0 and
`kv_usage` is clamped to [0, 1]. Nothing here raises on bad input: what cannot be read is simply absent.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
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
    rank_label: str | None = None  # the label telling the engines of one endpoint apart
    breakdown_label: str | None = None  # series with a non-empty value of it are breakdowns of the total


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
        rank_label="engine",
    ),
    "sglang": EngineSpec(
        name="sglang",
        waiting="sglang:num_queue_reqs",
        running="sglang:num_running_reqs",
        kv_usage=("sglang:token_usage",),
        cache_info="sglang:cache_config_info",
        cache_info_block_size_label="page_size",
        cache_info_num_blocks_label="num_pages",
        block_size_gauge="sglang:page_size",
        num_blocks_gauge="sglang:num_pages",
        rank_label="dp_rank",
        breakdown_label="priority",
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

# After the family name: optional `{labels}` (quoted values may hold `}` `,` and escapes), then the value. A quoted
# value is matched as runs of ordinary characters between escapes, possessively: a run is one C-level scan instead
# of one alternation per character, and a line that does not match fails without backtracking.
_QUOTED_VALUE = r'[^"\\\n]*+(?:\\.[^"\\\n]*+)*+'  # between the quotes
_SAMPLE_REST = re.compile(r'(?:\{([^"}]*+(?:"' + _QUOTED_VALUE + r'"[^"}]*+)*+)\})?[ \t]+(\S+)')
_LABEL_PAIR = re.compile(r'[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*"(' + _QUOTED_VALUE + r')"[ \t]*,?')
_AFTER_NAME = ("{", " ", "\t")
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
        # Spelled out rather than `dataclasses.replace`, which costs several times more on every scrape.
        return EndpointMetrics(
            waiting=previous.waiting if self.waiting is None else self.waiting,
            running=previous.running if self.running is None else self.running,
            kv_usage=previous.kv_usage if self.kv_usage is None else self.kv_usage,
            lora=previous.lora if self.lora is None else self.lora,
            block_size=previous.block_size if self.block_size is None else self.block_size,
            num_gpu_blocks=previous.num_gpu_blocks if self.num_gpu_blocks is None else self.num_gpu_blocks,
            scraped_at=scraped_at,
            stale=False,
        )


def parse_metrics(text: str, engine: EngineSpec) -> ParsedMetrics:
    usage: dict[str, float] = {}
    for family in engine.kv_usage:
        usage = _values(text, family, engine)
        if usage:
            break
    sizes, blocks = _cache_config(text, engine)
    return ParsedMetrics(
        waiting=_count(_total(_values(text, engine.waiting, engine))),
        running=_count(_total(_values(text, engine.running, engine))),
        kv_usage=_usage(usage, blocks),
        lora=_lora(text, engine.lora_info) if engine.lora_info is not None else None,
        block_size=next(iter(sizes.values()), None),
        num_gpu_blocks=sum(blocks.values()) if blocks else None,
    )


def _per_engine(text: str, family: str, engine: EngineSpec) -> dict[str, tuple[str | None, float]]:
    """engine (rank label value, "" when absent) -> (raw labels, value) of its first series, in exposition order."""
    if engine.rank_label is None:
        samples = _samples(text, family, first_only=True)
        return {"": samples[0]} if samples else {}
    found: dict[str, tuple[str | None, float]] = {}
    for raw, value in _samples(text, family):
        rank, breakdown = _rank(raw, engine.rank_label, engine.breakdown_label)
        if not breakdown and rank not in found:
            found[rank] = (raw, value)
    return found


def _values(text: str, family: str, engine: EngineSpec) -> dict[str, float]:
    return {rank: value for rank, (_, value) in _per_engine(text, family, engine).items()}


def _total(values: dict[str, float]) -> float | None:
    return sum(values.values()) if values else None


def _usage(usage: dict[str, float], blocks: dict[str, int]) -> float | None:
    """Block-weighted mean of the engines' usage (plain mean when a block count is unknown), clamped to [0, 1]."""
    if not usage:
        return None
    weights = [blocks.get(rank, 0) for rank in usage]
    if all(weights):
        mean = sum(u * w for u, w in zip(usage.values(), weights, strict=True)) / sum(weights)
    else:
        mean = sum(usage.values()) / len(usage)
    return min(1.0, max(0.0, mean))


def _cache_config(text: str, engine: EngineSpec) -> tuple[dict[str, int], dict[str, int]]:
    """Per engine: (block size, number of blocks), from the gauges, else from the info family's labels."""
    sizes: dict[str, int] = {}
    blocks: dict[str, int] = {}
    if engine.block_size_gauge is not None:
        sizes = _counts(_values(text, engine.block_size_gauge, engine))
    if engine.num_blocks_gauge is not None:
        blocks = _counts(_values(text, engine.num_blocks_gauge, engine))
    if engine.cache_info is not None and not (sizes and blocks):
        for rank, (raw, _) in _per_engine(text, engine.cache_info, engine).items():
            block_size, num_blocks = _cache_info(raw, engine)
            if block_size is not None:
                sizes.setdefault(rank, block_size)
            if num_blocks is not None:
                blocks.setdefault(rank, num_blocks)
    return sizes, blocks


def _counts(values: dict[str, float]) -> dict[str, int]:
    return {rank: max(0, int(value)) for rank, value in values.items()}


def _samples(text: str, family: str, *, first_only: bool = False) -> list[tuple[str | None, float]]:
    """(raw label text, value) of each readable sample line of `family` (only the first with `first_only`), in
    exposition order."""
    samples: list[tuple[str | None, float]] = []
    needle = "\n" + family
    if text.startswith(family):
        name_at = 0
    else:
        found = text.find(needle)
        name_at = found + 1 if found != -1 else -1
    in_group = False
    while name_at != -1:
        name_end = name_at + len(family)
        line_end = text.find("\n", name_end)
        if line_end == -1:
            line_end = len(text)
        # A longer family sharing this prefix (`..._total`, `..._bucket`) is a different family.
        if text.startswith(_AFTER_NAME, name_end):
            in_group = True
            match = _SAMPLE_REST.match(text, name_end, line_end)
            if match is not None:
                value = _float(match.group(2))
                if value is not None:
                    samples.append((match.group(1), value))
                    if first_only:
                        break
        elif in_group:
            break
        if in_group:
            # A family's samples are one group (the text format requires it): the next sample line is this
            # family's, or the group is over. Nothing after it is searched.
            name_at = line_end + 1
            if not text.startswith(family, name_at):
                name_at = _next_sample_line(text, name_at)
                if name_at == -1 or not text.startswith(family, name_at):
                    break
        else:
            found = text.find(needle, line_end)
            name_at = found + 1 if found != -1 else -1
    return samples


def _next_sample_line(text: str, at: int) -> int:
    """Where the first line at or after `at` that is not a comment or blank starts; -1 at the end of the text."""
    while at < len(text) and text[at] in "#\n":
        at = text.find("\n", at) + 1
        if not at:
            return -1
    return at if at < len(text) else -1


def _lora(text: str, family: str) -> LoraInfo | None:
    best: tuple[float, str | None] | None = None
    for raw, value in _samples(text, family):
        if best is None or value > best[0]:
            best = (value, raw)
    return None if best is None else _lora_info(best[1])


# Info families carry the same label text scrape after scrape: each distinct text is parsed once. The results are
# shared, so they are immutable (`LoraInfo`, tuples) or only ever read (the label mappings).
@functools.lru_cache(maxsize=1024)
def _cache_info(raw: str | None, engine: EngineSpec) -> tuple[int | None, int | None]:
    """(block size, number of blocks) from the labels of the engine's cache-config info family."""
    labels = _labels(raw)
    block_size = _int_label(labels, engine.cache_info_block_size_label)
    return block_size, _int_label(labels, engine.cache_info_num_blocks_label)


@functools.lru_cache(maxsize=4096)
def _rank(raw: str | None, rank_label: str, breakdown_label: str | None) -> tuple[str, bool]:
    """(the series' engine, whether it is a breakdown of the total) from its raw label text."""
    labels = _labels(raw)
    return labels.get(rank_label, ""), bool(breakdown_label and labels.get(breakdown_label))


@functools.lru_cache(maxsize=1024)
def _lora_info(raw: str | None) -> LoraInfo:
    labels = _labels(raw)
    return LoraInfo(
        max_loras=_int_label(labels, "max_lora") or 0,
        running=_adapters(labels.get("running_lora_adapters", "")),
        waiting=_adapters(labels.get("waiting_lora_adapters", "")),
    )


@functools.lru_cache(maxsize=1024)
def _labels(raw: str | None) -> Mapping[str, str]:
    if not raw:
        return {}
    return {name: _unescape(value) for name, value in _LABEL_PAIR.findall(raw)}


def _unescape(value: str) -> str:
    return _UNESCAPE.sub(_unescape_one, value) if "\\" in value else value


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


def _int_label(labels: Mapping[str, str], name: str) -> int | None:
    value = _float(labels.get(name, ""))
    return None if value is None else _count(value)
