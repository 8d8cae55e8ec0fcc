from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from kvroute.bench.quality.generators import build
from kvroute.bench.quality.workloads import (
    WORKLOADS_DIR,
    Fleet,
    WorkloadError,
    load_directory,
    parse_workload,
    resolve,
)

SHIPPED = (
    "bursty",
    "llmd-73-capacity",
    "multi-lora",
    "multi-turn",
    "pd",
    "shared-prefix-high",
    "shared-prefix-low",
    "varied",
)


def test_every_shipped_workload_loads_and_all_lists_them_by_name() -> None:
    specs = resolve("all")
    assert tuple(spec.name for spec in specs) == SHIPPED
    assert WORKLOADS_DIR.name == "workloads" and WORKLOADS_DIR.parent.name == "bench"


def test_the_73_capacity_workload_fills_73_percent_of_the_fleet_kv() -> None:
    spec = load_directory(WORKLOADS_DIR)["llmd-73-capacity"]
    generator = spec.generator
    assert generator.kind == "shared-prefix" and generator.users_per_group == 5
    cacheable = generator.groups * (generator.system_tokens + generator.users_per_group * generator.question_tokens)
    assert cacheable / Fleet.from_spec(spec.fleet).kv_tokens == pytest.approx(0.73, abs=0.01)


def test_names_and_paths_keep_the_order_given(tiny_file: Path) -> None:
    specs = resolve(f"varied,{tiny_file},bursty")
    assert [spec.name for spec in specs] == ["varied", "tiny", "bursty"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("engines: 3", "engines: 0"), "fleet.engines: Input should be greater than or equal to 1"),
        (("profile: tiny", "profile: h200"), "unknown profile 'h200'"),
        (("profile: tiny}", "profile: tiny, overrides: {num_gpu_blockz: 5}}"), "unknown profile field(s) in overrides"),
        (("profile: tiny}", "profile: tiny, prefill_engines: 3}"), "prefill_engines must leave at least one decode"),
        (("kind: shared-prefix", "kind: chat"), "generator: Input tag 'chat' found using 'kind'"),
        (("process: poisson", "process: weibull"), "arrival[0]: Input tag 'weibull'"),
        (("rate: 30", "rate: -1"), "arrival[0].poisson.rate: Input should be greater than 0"),
        (("seed: 3", "seed: 3\ncolour: red"), "colour: Extra inputs are not permitted"),
        (("name: tiny", "name: Tiny Workload"), "name: String should match pattern"),
    ],
)
def test_invalid_documents_are_refused_with_the_path_of_the_problem(
    tiny_text: str, change: tuple[str, str], message: str
) -> None:
    text = tiny_text.replace(*change)
    assert text != tiny_text
    with pytest.raises(WorkloadError) as caught:
        parse_workload(text, "w.yaml")
    assert str(caught.value).startswith("w.yaml: ")
    assert message in str(caught.value)


def test_broken_yaml_and_non_mappings_are_refused() -> None:
    with pytest.raises(WorkloadError, match=r"w.yaml: invalid YAML"):
        parse_workload("name: [unclosed", "w.yaml")
    with pytest.raises(WorkloadError, match="a workload is a mapping, not list"):
        parse_workload("- 1\n- 2\n", "w.yaml")


def test_unknown_names_missing_files_and_duplicates_are_refused(
    tmp_path: Path, tiny_file: Path, tiny_text: str
) -> None:
    with pytest.raises(WorkloadError, match=r"unknown workload 'nope'; known: bursty, llmd-73-capacity"):
        resolve("nope")
    with pytest.raises(WorkloadError, match="cannot read"):
        resolve(str(tmp_path / "missing.yaml"))
    with pytest.raises(WorkloadError, match="selected twice: tiny"):
        resolve(f"{tiny_file},{tiny_file}")
    (tmp_path / "copy.yaml").write_text(tiny_text)
    with pytest.raises(WorkloadError, match="workload name 'tiny' is also used by"):
        resolve("all", tmp_path)
    with pytest.raises(WorkloadError, match="no workload files"):
        resolve("all", tmp_path / "empty")


# sha256 (first 16 hex digits) of every request's id, arrival time, output length, adapter and token ids, at run
# seed 0, computed before families, output distributions and traces were added: those must not change them.
PINNED = {
    "bursty": (1600, "e0614f18823a83d5"),
    "llmd-73-capacity": (3000, "c6d76a470f64f062"),
    "multi-lora": (2000, "50a5a04fca82ef96"),
    "multi-turn": (2400, "7373739045dce289"),
    "pd": (2000, "5d54ed8ab7c40210"),
    "shared-prefix-high": (2400, "7f203bee90121f06"),
    "shared-prefix-low": (2000, "540a9a0e4db2a78f"),
    "varied": (1500, "5472e262cf2ab1b4"),
}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_workloads_give_the_same_requests_as_before(name: str) -> None:
    requests = build(load_directory(WORKLOADS_DIR)[name], 0).requests
    digest = hashlib.sha256()
    for r in requests:
        digest.update(f"{r.request_id}|{r.arrival_time!r}|{r.max_tokens}|{r.lora_name}|".encode())
        digest.update(",".join(map(str, r.prompt_token_ids)).encode() + b"\n")
    assert (len(requests), digest.hexdigest()[:16]) == PINNED[name]


def test_slow_engines_are_the_last_ones_with_scaled_step_times(tiny_text: str) -> None:
    spec = parse_workload(tiny_text.replace("profile: tiny}", "profile: tiny, slow_engines: 1, slow_factor: 2.5}"))
    fleet = Fleet.from_spec(spec.fleet)
    fast, slow = fleet.profiles[0], fleet.profiles[2]
    assert fleet.profiles[1] == fast and fast.prefill_per_token_s == 36e-6
    assert slow.prefill_per_token_s == pytest.approx(90e-6) and slow.step_overhead_s == pytest.approx(15e-3)
    assert slow.decode_per_seq_s == pytest.approx(75e-6) and slow.num_gpu_blocks == fast.num_gpu_blocks
    assert slow.step_time(100, 2, 50) == pytest.approx(2.5 * fast.step_time(100, 2, 50))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("profile: tiny}", "profile: tiny, slow_engines: 4}"), "slow_engines cannot exceed engines"),
        (("profile: tiny}", "profile: tiny, slow_factor: 0.5}"), "fleet.slow_factor: Input should be greater"),
        (("output_tokens: 6}", "output_tokens: 6, output: {median: 5, sigma: 1, min: 1, max: 9}}"), "exactly one"),
        (("output_tokens: 6}", "output: {median: 50, sigma: 1, min: 1, max: 9}}"), "need min <= median <= max"),
        (("  - {process: poisson, rate: 30, count: 60}\n", ""), "arrival: at least one phase is needed"),
    ],
)
def test_new_fields_are_validated(tiny_text: str, change: tuple[str, str], message: str) -> None:
    text = tiny_text.replace(*change).replace("arrival:\ngenerator", "arrival: []\ngenerator")
    assert text != tiny_text
    with pytest.raises(WorkloadError, match=re.escape(message)):
        parse_workload(text, "w.yaml")
