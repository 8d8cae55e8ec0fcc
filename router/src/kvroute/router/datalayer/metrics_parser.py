"""Read the few metric families the router needs out of a Prometheus text exposition.

This runs for every endpoint up to 20 times a second, so it does not tokenize the whole exposition, nor even decode
it: for each family it needs it searches the body's bytes for the family name at the start of a line
(`bytes.find`, in C) and parses only those sample lines (the label text of a series is decoded when its labels are
read, once per distinct text); everything else (HELP/TYPE comments, histograms, counters) is never looked at. A
family's samples are one group (the text format requires it), so the search for a family ends with its group: the
body is scanned to its end only for a family that is absent. An idle model server sends the same body scrape after
scrape: `ExpositionReader` keeps an endpoint's last body and its result, and answers a byte-identical body with it.

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


@dataclass(frozen=True, slots=True, eq=False)  # compared (and hashed, as a cache key) by identity
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
_SAMPLE_REST = re.compile(rb'(?:\{([^"}]*+(?:"' + _QUOTED_VALUE.encode() + rb'"[^"}]*+)*+)\})?[ \t]+(\S+)')
_SKIPPED_LINES = re.compile(rb"(?:#[^\n]*+\n|\n)*+")  # comments and blank lines, which a group may hold
_LABEL_PAIR = re.compile(r'[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*"(' + _QUOTED_VALUE + r')"[ \t]*,?')
_AFTER_NAME = (b"{", b" ", b"\t")
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


def parse_metrics(exposition: bytes | str, engine: EngineSpec) -> ParsedMetrics:
    """What `exposition` (the body of a `/metrics` answer; text is encoded as UTF-8) says of `engine`'s families."""
    body = exposition.encode("utf-8", "surrogatepass") if isinstance(exposition, str) else exposition
    names = _names(engine)
    usage: _Series = {}
    for family in names.kv_usage:
        usage = _first_series(body, family, engine)
        if usage:
            break
    sizes, blocks = _cache_config(body, engine, names)
    return ParsedMetrics(
        waiting=_count_total(_first_series(body, names.waiting, engine)),
        running=_count_total(_first_series(body, names.running, engine)),
        kv_usage=_usage(usage, blocks),
        lora=None if names.lora_info is None else _lora(body, names.lora_info),
        block_size=next(iter(sizes.values()), None),
        num_gpu_blocks=sum(blocks.values()) if blocks else None,
    )


class ExpositionReader:
    """Reads one endpoint's expositions: a body byte-identical to the previous one has the previous one's result.

    An idle model server serves the same bytes scrape after scrape; comparing them (`memcmp`) costs a fraction of
    a microsecond where reading them costs tens. Any other body is read in full, so the result is always what
    `parse_metrics` says of the body at hand.
    """

    __slots__ = ("_body", "_engine", "_parsed")

    def __init__(self) -> None:
        self._body: bytes | None = None
        self._engine: EngineSpec | None = None
        self._parsed = ParsedMetrics()

    def read(self, body: bytes, engine: EngineSpec) -> ParsedMetrics:
        if body == self._body and engine is self._engine:
            return self._parsed
        parsed = parse_metrics(body, engine)
        self._body, self._engine, self._parsed = body, engine, parsed
        return parsed


@dataclass(frozen=True, slots=True)
class _Names:
    """An engine's family names as the bytes searched for."""

    waiting: bytes
    running: bytes
    kv_usage: tuple[bytes, ...]
    lora_info: bytes | None
    cache_info: bytes | None
    block_size_gauge: bytes | None
    num_blocks_gauge: bytes | None


@functools.cache
def _names(engine: EngineSpec) -> _Names:
    def encoded(name: str | None) -> bytes | None:
        return None if name is None else name.encode()

    return _Names(
        waiting=engine.waiting.encode(),
        running=engine.running.encode(),
        kv_usage=tuple(name.encode() for name in engine.kv_usage),
        lora_info=encoded(engine.lora_info),
        cache_info=encoded(engine.cache_info),
        block_size_gauge=encoded(engine.block_size_gauge),
        num_blocks_gauge=encoded(engine.num_blocks_gauge),
    )


_Series = dict[str, tuple[bytes | None, float]]
"""engine (its rank label's value, "" when absent) -> (raw label text, value) of the engine's first series."""


def _first_series(body: bytes, family: bytes, engine: EngineSpec) -> _Series:
    """The first readable series of each engine (breakdowns skipped), in exposition order."""
    if engine.rank_label is None:
        samples = _samples(body, family, first_only=True)
        return {"": samples[0]} if samples else {}
    found: _Series = {}
    for raw, value in _samples(body, family):
        rank = _rank(raw, engine)
        if rank is not None and rank not in found:
            found[rank] = (raw, value)
    return found


def _count_total(series: _Series) -> int | None:
    return max(0, int(sum([value for _, value in series.values()]))) if series else None


def _usage(usage: _Series, blocks: dict[str, int]) -> float | None:
    """Block-weighted mean of the engines' usage (plain mean when a block count is unknown), clamped to [0, 1]."""
    if not usage:
        return None
    values = [value for _, value in usage.values()]
    weights = [blocks.get(rank, 0) for rank in usage]
    if all(weights):
        mean = sum(u * w for u, w in zip(values, weights, strict=True)) / sum(weights)
    else:
        mean = sum(values) / len(values)
    return min(1.0, max(0.0, mean))


def _cache_config(body: bytes, engine: EngineSpec, names: _Names) -> tuple[dict[str, int], dict[str, int]]:
    """Per engine: (block size, number of blocks), from the gauges, else from the info family's labels."""
    sizes: dict[str, int] = {}
    blocks: dict[str, int] = {}
    if names.block_size_gauge is not None:
        sizes = _counts(_first_series(body, names.block_size_gauge, engine))
    if names.num_blocks_gauge is not None:
        blocks = _counts(_first_series(body, names.num_blocks_gauge, engine))
    if names.cache_info is not None and not (sizes and blocks):
        for rank, (raw, _) in _first_series(body, names.cache_info, engine).items():
            block_size, num_blocks = _cache_info(raw, engine)
            if block_size is not None:
                sizes.setdefault(rank, block_size)
            if num_blocks is not None:
                blocks.setdefault(rank, num_blocks)
    return sizes, blocks


def _counts(series: _Series) -> dict[str, int]:
    return {rank: max(0, int(value)) for rank, (_, value) in series.items()}


def _samples(body: bytes, family: bytes, *, first_only: bool = False) -> list[tuple[bytes | None, float]]:
    """(raw label text, value) of each readable sample line of `family` (only the first with `first_only`), in
    exposition order."""
    samples: list[tuple[bytes | None, float]] = []
    if body.startswith(family):
        name_at = 0
    else:
        name_at = body.find(b"\n" + family)
        if name_at == -1:
            return samples
        name_at += 1
    in_group = False
    while True:
        name_end = name_at + len(family)
        line_end = body.find(b"\n", name_end)
        if line_end == -1:
            line_end = len(body)
        # A longer family sharing this prefix (`..._total`, `..._bucket`) is a different family.
        if body.startswith(_AFTER_NAME, name_end):
            in_group = True
            match = _SAMPLE_REST.match(body, name_end, line_end)
            if match is not None:
                value = _float(match[2])
                if value is not None:
                    samples.append((match[1], value))
                    if first_only:
                        return samples
        elif in_group:
            return samples
        if in_group:
            # A family's samples are one group (the text format requires it): the next sample line is this
            # family's, or the group is over. Nothing after it is searched.
            skipped = _SKIPPED_LINES.match(body, line_end + 1)
            assert skipped is not None  # it matches the empty string
            name_at = skipped.end()
            if not body.startswith(family, name_at):
                return samples
        else:
            name_at = body.find(b"\n" + family, line_end)
            if name_at == -1:
                return samples
            name_at += 1


def _lora(body: bytes, family: bytes) -> LoraInfo | None:
    best: tuple[float, bytes | None] | None = None
    for raw, value in _samples(body, family):
        if best is None or value > best[0]:
            best = (value, raw)
    return None if best is None else _lora_info(best[1])


# Info families carry the same label text scrape after scrape: each distinct text is parsed once. The results are
# shared, so they are immutable (`LoraInfo`, tuples) or only ever read (the label mappings).
@functools.lru_cache(maxsize=1024)
def _cache_info(raw: bytes | None, engine: EngineSpec) -> tuple[int | None, int | None]:
    """(block size, number of blocks) from the labels of the engine's cache-config info family."""
    labels = _labels(raw)
    block_size = _int_label(labels, engine.cache_info_block_size_label)
    return block_size, _int_label(labels, engine.cache_info_num_blocks_label)


@functools.lru_cache(maxsize=4096)
def _rank(raw: bytes | None, engine: EngineSpec) -> str | None:
    """The series' engine (its rank label's value) from its raw label text; None for a breakdown of the total."""
    labels = _labels(raw)
    if engine.breakdown_label and labels.get(engine.breakdown_label):
        return None
    assert engine.rank_label is not None
    return labels.get(engine.rank_label, "")


@functools.lru_cache(maxsize=1024)
def _lora_info(raw: bytes | None) -> LoraInfo:
    labels = _labels(raw)
    return LoraInfo(
        max_loras=_int_label(labels, "max_lora") or 0,
        running=_adapters(labels.get("running_lora_adapters", "")),
        waiting=_adapters(labels.get("waiting_lora_adapters", "")),
    )


@functools.lru_cache(maxsize=1024)
def _labels(raw: bytes | None) -> Mapping[str, str]:
    if not raw:
        return {}
    return {name: _unescape(value) for name, value in _LABEL_PAIR.findall(raw.decode("utf-8", "replace"))}


def _unescape(value: str) -> str:
    return _UNESCAPE.sub(_unescape_one, value) if "\\" in value else value


def _unescape_one(match: re.Match[str]) -> str:
    char = match.group(1)
    return _ESCAPES.get(char, "\\" + char)


def _adapters(value: str) -> tuple[str, ...]:
    return tuple(name for name in (part.strip() for part in value.split(",")) if name)


def _float(text: bytes | str) -> float | None:
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
