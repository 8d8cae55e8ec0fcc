from __future__ import annotations

from pathlib import Path

import pytest

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
        (("kind: shared-prefix", "kind: agentic"), "generator: Input tag 'agentic' found using 'kind'"),
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
