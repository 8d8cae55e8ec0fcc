from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from kvroute.router.datalayer import metrics_parser
from kvroute.router.datalayer.metrics_parser import ENGINES, EngineSpec, ExpositionReader, ParsedMetrics, parse_metrics
from kvroute.router.framework import EndpointMetrics, LoraInfo

MODEL = "meta-llama/Llama-3.1-8B-Instruct"

# Shaped like a vLLM 0.11 exposition: comments, a prefix-sharing counter, histograms, two LoRA readings.
VLLM_EXPOSITION = f"""\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 1234.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} 12.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{MODEL}"}} 4.0
# HELP vllm:num_requests_waiting_by_reason_total Requests waiting, by reason.
# TYPE vllm:num_requests_waiting_by_reason_total counter
vllm:num_requests_waiting_by_reason_total{{engine="0",model_name="{MODEL}",reason="capacity"}} 99.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{MODEL}"}} 0.4375
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{{max_lora="4",running_lora_adapters="sql-lora,chat-lora",waiting_lora_adapters=""}} 1.7e9
vllm:lora_requests_info{{max_lora="4",running_lora_adapters="sql-lora",waiting_lora_adapters="tool-lora"}} 1.8e9
vllm:lora_requests_info{{max_lora="4",running_lora_adapters="",waiting_lora_adapters=""}} 1.75e9
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{{block_size="16",cache_dtype="auto",enable_prefix_caching="True",num_gpu_blocks="27136"}} 1.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.001",model_name="{MODEL}"}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.005",model_name="{MODEL}"}} 3.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="{MODEL}"}} 17.0
vllm:time_to_first_token_seconds_count{{engine="0",model_name="{MODEL}"}} 17.0
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="{MODEL}"}} 1.25
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",model_name="{MODEL}"}} 123456.0
"""

SGLANG_EXPOSITION = f"""\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{{model_name="{MODEL}"}} 7.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{{model_name="{MODEL}"}} 2.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{{model_name="{MODEL}"}} 0.25
# HELP sglang:cache_config_info Cache configuration.
# TYPE sglang:cache_config_info gauge
sglang:cache_config_info{{model_name="{MODEL}",num_pages="4096",page_size="32"}} 1.0
sglang:gen_throughput{{model_name="{MODEL}"}} 512.5
"""

TRTLLM_EXPOSITION = """\
# TYPE trtllm_num_requests_waiting gauge
trtllm_num_requests_waiting{model_name="llama"} 1
# TYPE trtllm_num_requests_running gauge
trtllm_num_requests_running{model_name="llama"} 9
# TYPE trtllm_kv_cache_utilization gauge
trtllm_kv_cache_utilization{model_name="llama"} 0.9
# TYPE trtllm_kv_cache_tokens_per_block gauge
trtllm_kv_cache_tokens_per_block{model_name="llama"} 64
# TYPE trtllm_kv_cache_max_blocks gauge
trtllm_kv_cache_max_blocks{model_name="llama"} 2048
"""


def reference_parse(text: str, engine: EngineSpec) -> ParsedMetrics:
    """The parser's rules applied to prometheus_client's full parse of the same text."""
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def series(name: str) -> list[tuple[dict[str, str], float]]:
        return [(dict(s.labels), s.value) for s in samples if s.name == name and math.isfinite(s.value)]

    def per_engine(name: str | None) -> dict[str, tuple[dict[str, str], float]]:
        """The first series of each engine, breakdowns skipped."""
        found: dict[str, tuple[dict[str, str], float]] = {}
        for labels, value in series(name) if name else []:
            if engine.breakdown_label and labels.get(engine.breakdown_label):
                continue
            rank = labels.get(engine.rank_label, "") if engine.rank_label else ""
            found.setdefault(rank, (labels, value))
            if engine.rank_label is None:
                break
        return found

    def values(name: str | None) -> list[float]:
        return [value for _, value in per_engine(name).values()]

    def count(value: float | None) -> int | None:
        return None if value is None else max(0, int(value))

    def total(name: str) -> int | None:
        found = values(name)
        return count(sum(found)) if found else None

    def int_label(labels: dict[str, str], name: str) -> int | None:
        try:
            value = float(labels[name])
        except (KeyError, ValueError):
            return None
        return count(value) if math.isfinite(value) else None

    sizes: dict[str, int] = {}
    blocks: dict[str, int] = {}
    for gauge, into in ((engine.block_size_gauge, sizes), (engine.num_blocks_gauge, blocks)):
        for rank, (_, value) in per_engine(gauge).items():
            into[rank] = max(0, int(value))
    if engine.cache_info and not (sizes and blocks):
        for rank, (info, _) in per_engine(engine.cache_info).items():
            size, number = (
                int_label(info, engine.cache_info_block_size_label),
                int_label(info, engine.cache_info_num_blocks_label),
            )
            if size is not None:
                sizes.setdefault(rank, size)
            if number is not None:
                blocks.setdefault(rank, number)
    usage = next((found for found in (per_engine(name) for name in engine.kv_usage) if found), {})
    kv = None
    if usage:
        weights = [blocks.get(rank, 0) for rank in usage]
        if all(weights):
            kv = sum(v * w for (_, v), w in zip(usage.values(), weights, strict=True)) / sum(weights)
        else:
            kv = sum(v for _, v in usage.values()) / len(usage)
    lora = None
    if engine.lora_info and series(engine.lora_info):
        labels = max(series(engine.lora_info), key=lambda item: item[1])[0]
        lora = LoraInfo(
            max_loras=int_label(labels, "max_lora") or 0,
            running=tuple(a.strip() for a in labels.get("running_lora_adapters", "").split(",") if a.strip()),
            waiting=tuple(a.strip() for a in labels.get("waiting_lora_adapters", "").split(",") if a.strip()),
        )
    return ParsedMetrics(
        waiting=total(engine.waiting),
        running=total(engine.running),
        kv_usage=None if kv is None else min(1.0, max(0.0, kv)),
        lora=lora,
        block_size=next(iter(sizes.values()), None),
        num_gpu_blocks=sum(blocks.values()) if blocks else None,
    )


def test_vllm_exposition() -> None:
    parsed = parse_metrics(VLLM_EXPOSITION, ENGINES["vllm"])

    assert parsed == ParsedMetrics(
        waiting=4,
        running=12,
        kv_usage=0.4375,
        lora=LoraInfo(max_loras=4, running=("sql-lora",), waiting=("tool-lora",)),
        block_size=16,
        num_gpu_blocks=27136,
    )
    assert parsed == reference_parse(VLLM_EXPOSITION, ENGINES["vllm"])


def test_sglang_exposition() -> None:
    parsed = parse_metrics(SGLANG_EXPOSITION, ENGINES["sglang"])

    assert parsed == ParsedMetrics(waiting=2, running=7, kv_usage=0.25, block_size=32, num_gpu_blocks=4096)
    assert parsed == reference_parse(SGLANG_EXPOSITION, ENGINES["sglang"])


def test_trtllm_exposition_under_both_engine_names() -> None:
    expected = ParsedMetrics(waiting=1, running=9, kv_usage=0.9, block_size=64, num_gpu_blocks=2048)

    assert parse_metrics(TRTLLM_EXPOSITION, ENGINES["trtllm"]) == expected
    assert parse_metrics(TRTLLM_EXPOSITION, ENGINES["trtllm-serve"]) == expected
    assert expected == reference_parse(TRTLLM_EXPOSITION, ENGINES["trtllm"])


def test_an_engine_reads_only_its_own_families() -> None:
    assert not parse_metrics(VLLM_EXPOSITION, ENGINES["sglang"]).has_load
    assert not parse_metrics(SGLANG_EXPOSITION, ENGINES["vllm"]).has_load


def test_older_vllm_kv_name_is_the_fallback() -> None:
    old = 'vllm:num_requests_waiting 0\nvllm:gpu_cache_usage_perc{model_name="m"} 0.75\n'
    both = old + 'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n'

    assert parse_metrics(old, ENGINES["vllm"]).kv_usage == 0.75
    assert parse_metrics(both, ENGINES["vllm"]).kv_usage == 0.5


def test_lora_series_with_the_largest_value_wins_whatever_its_position() -> None:
    text = (
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="new",waiting_lora_adapters="a, b"} 300\n'
        'vllm:lora_requests_info{max_lora="1",running_lora_adapters="old",waiting_lora_adapters=""} 100\n'
        'vllm:lora_requests_info{max_lora="1",running_lora_adapters="older",waiting_lora_adapters=""} 200\n'
    )

    assert parse_metrics(text, ENGINES["vllm"]).lora == LoraInfo(max_loras=2, running=("new",), waiting=("a", "b"))


def test_label_values_with_escapes_braces_and_commas() -> None:
    text = (
        'vllm:lora_requests_info{running_lora_adapters="we\\"ird},x",max_lora="3",'
        'waiting_lora_adapters="back\\\\slash"} 1\n'
    )

    lora = parse_metrics(text, ENGINES["vllm"]).lora

    assert lora == LoraInfo(max_loras=3, running=('we"ird}', "x"), waiting=("back\\slash",))
    assert lora == reference_parse(text, ENGINES["vllm"]).lora


def test_engines_are_summed_the_first_series_of_an_engine_wins_and_values_are_normalised() -> None:
    text = (
        'vllm:num_requests_waiting{engine="0"} 3.9\n'
        'vllm:num_requests_waiting{engine="1"} 5\n'
        'vllm:num_requests_waiting{engine="1"} 50\n'
        "vllm:num_requests_running -2\n"
        "vllm:kv_cache_usage_perc 1.7 1700000000000\n"
    )

    parsed = parse_metrics(text, ENGINES["vllm"])

    assert (parsed.waiting, parsed.running, parsed.kv_usage) == (8, 0, 1.0)


def test_unreadable_values_are_absent_and_the_next_series_is_used() -> None:
    text = (
        "vllm:num_requests_waiting NaN\n"
        "vllm:num_requests_waiting 6\n"
        "vllm:num_requests_running +Inf\n"
        "vllm:kv_cache_usage_perc abc\n"
        'vllm:cache_config_info{block_size="sixteen",num_gpu_blocks="100"} 1\n'
    )

    parsed = parse_metrics(text, ENGINES["vllm"])

    assert parsed == ParsedMetrics(waiting=6, num_gpu_blocks=100)


def test_crlf_line_endings_and_a_missing_final_newline() -> None:
    text = "# TYPE vllm:num_requests_running gauge\r\nvllm:num_requests_running 2\r\nvllm:num_requests_waiting 1"

    parsed = parse_metrics(text, ENGINES["vllm"])

    assert (parsed.waiting, parsed.running) == (1, 2)


def test_garbage_never_raises_and_yields_nothing() -> None:
    for text in (
        "",
        "\n\n\n",
        "not prometheus at all",
        "vllm:num_requests_waiting",
        "vllm:num_requests_waiting{",
        'vllm:num_requests_waiting{model="unterminated} 3',
        "vllm:num_requests_waiting{} ",
        "vllm:num_requests_waiting{" + '"' * 10_000,
        "\x00\xff\ufffd" * 100,
        "# vllm:num_requests_waiting 3\n#vllm:num_requests_running 4",
    ):
        assert parse_metrics(text, ENGINES["vllm"]) == ParsedMetrics()


@given(st.text(alphabet=st.sampled_from('vlm:_nuqestwairgkcp{}="\\, 0.19eInfNa#\n\t\r'), max_size=400))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_text_never_raises(text: str) -> None:
    for engine in ENGINES.values():
        parse_metrics(text, engine)


class _Exposition(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


_label_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_value = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@st.composite
def vllm_families(draw: st.DrawFn) -> list[Metric]:
    families: list[Metric] = []
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"):
        if draw(st.booleans()):
            family = GaugeMetricFamily(name, "doc", labels=["model_name", "engine"])
            for _ in range(draw(st.integers(1, 3))):
                family.add_metric([draw(_label_text), draw(_label_text)], draw(_value))
            families.append(family)
    lora = GaugeMetricFamily(
        "vllm:lora_requests_info", "doc", labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"]
    )
    for _ in range(draw(st.integers(0, 3))):
        lora.add_metric([str(draw(st.integers(0, 8))), draw(_label_text), draw(_label_text)], draw(_value))
    info = GaugeMetricFamily("vllm:cache_config_info", "doc", labels=["block_size", "num_gpu_blocks", "x"])
    info.add_metric([str(draw(st.integers(1, 64))), draw(st.sampled_from(["100", "x", ""])), draw(_label_text)], 1)
    distractor = GaugeMetricFamily("vllm:num_requests_waiting_extra", "doc", labels=["l"])
    distractor.add_metric([draw(_label_text)], draw(_value))
    return [distractor, *families, lora, info]


@given(vllm_families())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_agrees_with_prometheus_client_on_generated_expositions(families: list[Metric]) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Exposition(families))
    text = generate_latest(registry).decode()

    assert parse_metrics(text, ENGINES["vllm"]) == reference_parse(text, ENGINES["vllm"])


def test_apply_keeps_previous_values_for_missing_fields() -> None:
    previous = EndpointMetrics(waiting=1, running=2, kv_usage=0.3, block_size=16, num_gpu_blocks=10, stale=True)

    fresh = ParsedMetrics(running=5, kv_usage=0.0).apply(previous, scraped_at=42.0)

    assert fresh == EndpointMetrics(
        waiting=1, running=5, kv_usage=0.0, block_size=16, num_gpu_blocks=10, scraped_at=42.0, stale=False
    )


def test_apply_carries_every_field_the_exposition_lacked() -> None:
    # `apply` names the fields one by one: a field added to EndpointMetrics must not be reset by every scrape.
    previous = EndpointMetrics(
        waiting=1,
        running=2,
        kv_usage=0.3,
        lora=LoraInfo(max_loras=2, running=("a",)),
        block_size=16,
        num_gpu_blocks=10,
        scraped_at=1.0,
        stale=False,
    )
    assert all(getattr(previous, f.name) != f.default for f in dataclasses.fields(EndpointMetrics))

    fresh = ParsedMetrics().apply(previous, scraped_at=42.0)

    assert fresh == dataclasses.replace(previous, scraped_at=42.0, stale=False)


def test_scanner_is_much_faster_than_the_full_parser() -> None:
    # A big exposition: the real one plus many histogram families the router never reads.
    filler = "".join(
        f'vllm:h{i}_bucket{{engine="0",le="{le}",model_name="{MODEL}"}} {i}.0\n' for i in range(60) for le in range(30)
    )
    text = VLLM_EXPOSITION + filler

    def best_of(runs: int, fn: object) -> float:
        assert callable(fn)
        best = math.inf
        for _ in range(runs):
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        return best

    ours = best_of(20, lambda: parse_metrics(text, ENGINES["vllm"]))
    full = best_of(5, lambda: list(text_string_to_metric_families(text)))

    assert ours * 20 < full, f"scanner {ours * 1e3:.3f} ms vs full parser {full * 1e3:.3f} ms"


def test_the_body_is_read_as_bytes_with_the_same_result_as_its_text() -> None:
    for text, engine in ((VLLM_EXPOSITION, "vllm"), (SGLANG_EXPOSITION, "sglang"), (TRTLLM_EXPOSITION, "trtllm")):
        assert parse_metrics(text.encode(), ENGINES[engine]) == parse_metrics(text, ENGINES[engine])


def test_label_text_that_is_not_utf8_is_read_with_replacement_characters() -> None:
    body = b'vllm:lora_requests_info{max_lora="1",running_lora_adapters="caf\xe9",waiting_lora_adapters=""} 1\n'

    assert parse_metrics(body, ENGINES["vllm"]).lora == LoraInfo(max_loras=1, running=("caf\ufffd",))


class _CountingParse:
    """Stands in for `parse_metrics` and counts the bodies it was given."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, body: bytes, engine: EngineSpec) -> ParsedMetrics:
        self.bodies.append(body)
        return parse_metrics(body, engine)


@pytest.fixture
def counting_parse(monkeypatch: pytest.MonkeyPatch) -> _CountingParse:
    counting = _CountingParse()
    monkeypatch.setattr(metrics_parser, "parse_metrics", counting)
    return counting


def test_a_body_identical_to_the_previous_one_is_not_parsed_again(counting_parse: _CountingParse) -> None:
    reader = ExpositionReader()
    body = VLLM_EXPOSITION.encode()

    first = reader.read(body, ENGINES["vllm"])
    again = reader.read(bytes(bytearray(body)), ENGINES["vllm"])  # equal bytes, another object

    assert again is first
    assert first == parse_metrics(VLLM_EXPOSITION, ENGINES["vllm"])
    assert len(counting_parse.bodies) == 1


def test_a_body_differing_in_one_gauge_value_is_parsed_again(counting_parse: _CountingParse) -> None:
    reader = ExpositionReader()
    body = VLLM_EXPOSITION.encode()
    changed = body.replace(b'model_name="' + MODEL.encode() + b'"} 4.0', b'model_name="' + MODEL.encode() + b'"} 5.0')
    assert len(changed) == len(body) and changed != body

    before = reader.read(body, ENGINES["vllm"])
    after = reader.read(changed, ENGINES["vllm"])
    back = reader.read(body, ENGINES["vllm"])

    assert (before.waiting, after.waiting, back.waiting) == (4, 5, 4)
    assert after == dataclasses.replace(before, waiting=5)
    assert len(counting_parse.bodies) == 3


def test_the_same_body_read_for_another_engine_is_parsed_again(counting_parse: _CountingParse) -> None:
    reader = ExpositionReader()
    body = SGLANG_EXPOSITION.encode()

    assert not reader.read(body, ENGINES["vllm"]).has_load
    assert reader.read(body, ENGINES["sglang"]).running == 7
    assert len(counting_parse.bodies) == 2
