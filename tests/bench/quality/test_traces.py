from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvroute.bench.quality.generators import build
from kvroute.bench.quality.traces import BLOCK_TOKENS, parse_fleet, replay, sample_text, trace_workload
from kvroute.bench.quality.workloads import TraceSpec, WorkloadError, parse_workload
from kvroute.simulator.tokenizer import Tokenizer

TRACES = Path(__file__).resolve().parents[3] / "bench" / "traces"


def write(tmp_path: Path, rows: list[Any], name: str = "t.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def spec(path: Path, **options: Any) -> TraceSpec:
    return TraceSpec.model_validate({"kind": "trace", "path": str(path), **options})


MOONCAKE = [
    {"timestamp": 2000, "input_length": 1100, "output_length": 20, "hash_ids": [1, 2, 3]},
    {"timestamp": 500, "input_length": 700, "output_length": 10, "hash_ids": [1, 9]},
    {"timestamp": 4000, "input_length": 1024, "output_length": 30, "hash_ids": [1, 2, 7, 8]},
]


def test_mooncake_hash_ids_become_shared_token_prefixes(tmp_path: Path) -> None:
    requests = replay(spec(write(tmp_path, MOONCAKE)), 131_072)
    assert [r.request_id for r in requests] == ["req-000000", "req-000001", "req-000002"]
    assert [r.arrival_time for r in requests] == [0.5, 2.0, 4.0]  # sorted, milliseconds to seconds
    first, second, third = (r.prompt_token_ids for r in requests)
    assert [len(ids) for ids in (first, second, third)] == [700, 1100, 1024]  # the last block is partial
    assert first[:BLOCK_TOKENS] == second[:BLOCK_TOKENS] == third[:BLOCK_TOKENS]  # hash id 1
    assert second[:1024] == third[:1024]  # ids 1, 2 (unused ids 7, 8 beyond input_length)
    assert first[BLOCK_TOKENS:] != second[BLOCK_TOKENS:700]
    assert [r.max_tokens for r in requests] == [10, 20, 30]
    for r in requests:
        assert Tokenizer().encode(r.prompt)[: len(r.prompt_token_ids)] == r.prompt_token_ids


def test_the_same_trace_gives_the_same_requests(tmp_path: Path) -> None:
    path = write(tmp_path, MOONCAKE)
    assert replay(spec(path), 4096) == replay(spec(path), 4096)


def test_clipping_keeps_the_front_and_halves_long_outputs(tmp_path: Path) -> None:
    requests = replay(spec(write(tmp_path, MOONCAKE), max_context=800), 131_072)
    full = replay(spec(write(tmp_path, MOONCAKE)), 131_072)
    # output <= 800 / 2, then input <= 800 - output: 1100 + 20 -> 780 + 20; 1024 + 30 -> 770 + 30
    assert [(len(r.prompt_token_ids), r.max_tokens) for r in requests] == [(700, 10), (780, 20), (770, 30)]
    assert requests[1].prompt_token_ids == full[1].prompt_token_ids[:780]
    assert len(requests[1].prompt) == 780 * 4


def test_speed_and_window(tmp_path: Path) -> None:
    path = write(tmp_path, MOONCAKE)
    assert [r.arrival_time for r in replay(spec(path, speed=2), 4096)] == [0.25, 1.0, 2.0]
    kept = replay(spec(path, window=(1.0, 4.0), speed=2), 4096)
    assert [(r.arrival_time, r.max_tokens) for r in kept] == [(0.5, 20)]  # (2.0 - 1.0) / 2


def test_plain_lines_with_prompts_and_messages(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    rows = [
        {"timestamp": 1.5, "prompt": "abcd" * 10, "max_tokens": 5},
        {"timestamp_ms": 500, "messages": messages, "max_tokens": 7},
    ]
    first, second = replay(spec(write(tmp_path, rows)), 4096)
    tokenizer = Tokenizer()
    assert (first.arrival_time, first.max_tokens, first.prompt) == (0.5, 7, tokenizer.render_chat(messages))
    assert first.prompt_token_ids == tokenizer.encode(first.prompt)
    assert (second.arrival_time, second.prompt_token_ids) == (1.5, tokenizer.encode("abcd" * 10))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "t.jsonl:2: invalid JSON"),
        ("[1, 2]", "t.jsonl:2: a trace line is an object, not list"),
        ('{"timestamp": 1, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2]}', "needs 3 hash_ids, got 2"),
        ('{"timestamp": 1, "input_length": 10, "output_length": 0, "hash_ids": [1]}', "t.jsonl:2: output_length: "),
        ('{"timestamp": 1, "max_tokens": 3}', "t.jsonl:2: Value error, give exactly one of prompt and messages"),
        ('{"prompt": "x", "max_tokens": 3}', "give exactly one of timestamp (s) and timestamp_ms"),
        ('{"timestamp": 1, "prompt": "x", "max_token": 3}', "t.jsonl:2: max_token: Extra inputs are not permitted"),
    ],
)
def test_bad_lines_name_the_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, [MOONCAKE[0], line])
    with pytest.raises(WorkloadError) as caught:
        replay(spec(path), 4096)
    assert message in str(caught.value) and str(caught.value).startswith(str(path))


def test_a_trace_workload_from_yaml_or_the_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, MOONCAKE, "My Trace.jsonl")
    text = f"name: t\nfleet: {{engines: 2, profile: tiny}}\ngenerator: {{kind: trace, path: '{path}', speed: 2}}\n"
    workload = build(parse_workload(text), 0)
    assert len(workload.requests) == 3
    # The tiny profile's context (4,096) clips nothing here; a fleet from flags names its profile fields.
    fleet = parse_fleet("engines=3,profile=tiny,num_gpu_blocks=100,slow_engines=1,slow_factor=2.0")
    assert (fleet.engines, fleet.slow_engines, fleet.overrides) == (3, 1, {"num_gpu_blocks": 100})
    spec_ = trace_workload(str(path), fleet, speed=2.0, window=None, max_context=None)
    assert spec_.name == "my-trace" and build(spec_, 0).requests == workload.requests
    with pytest.raises(WorkloadError, match="a trace brings its own arrival times"):
        parse_workload(text + "arrival: [{process: burst, count: 1}]\n")
    with pytest.raises(WorkloadError, match="--fleet: engines: not a number"):
        parse_fleet("engines=many")
    with pytest.raises(WorkloadError, match="unknown profile field"):
        parse_fleet("num_gpu_blockz=3")


@pytest.mark.parametrize("name", ["sample-mooncake.jsonl", "sample-plain.jsonl"])
def test_the_shipped_sample_traces_are_the_generators_output(name: str) -> None:
    assert (TRACES / name).read_text() == sample_text(name)


def test_the_mooncake_sample_has_long_prompts_sharing_prefixes() -> None:
    rows = [json.loads(line) for line in (TRACES / "sample-mooncake.jsonl").read_text().splitlines()]
    assert len(rows) == 1000
    assert 8_000 <= sum(r["input_length"] for r in rows) / len(rows) <= 15_000
    firsts = {r["hash_ids"][0] for r in rows}
    assert len(firsts) <= 6  # every session starts with one of the shared system prompts
