"""`kvroute tune` end to end on a tiny workload: three trials, files written, a second run resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kvroute.cli import main
from kvroute.router.config.loader import load_config
from kvroute.router.plugins.registry import REGISTRY


def _args(tiny_file: Path, base_file: Path, out: Path, *extra: str) -> list[str]:
    return [
        "tune",
        f"--workloads={tiny_file}",
        f"--base={base_file}",
        "--trials=3",
        "--train-seeds=0,1",
        "--holdout-seeds=1000",
        "--peers=gie-default",
        f"--out={out}",
        "--pool=llama",
        "--namespace=llm",
        "--quiet",
        *extra,
    ]


def test_a_tuning_run_writes_the_report_and_the_chosen_configuration(
    tiny_file: Path, base_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"

    assert main(_args(tiny_file, base_file, out)) == 0

    stdout = capsys.readouterr().out
    assert stdout.startswith("# kvroute tune\n\n**Verdict: ")
    assert "## Training cases (2)" in stdout and "## Held-out cases (1)" in stdout
    assert "| tiny@1000 |" in stdout
    assert "4 configurations, 2 training and 1 held-out cases in" in stdout
    report = json.loads((out / "report.json").read_text())
    assert set(report["splits"]["holdout"]["policies"]) >= {"base", "gie-default"}
    assert (out / "report.md").read_text().startswith("# kvroute tune")
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"trial-00{i}.yaml" for i in range(4)]
    chosen = report["verdict"]["chosen"]
    config = (out / "endpoint-picker-config.yaml").read_text()
    assert config.startswith(f"# Chosen by `kvroute tune` (seed 0, 3 trials, base: {base_file}): {chosen}.")
    assert yaml.safe_load(config) == yaml.safe_load(report["configs"][chosen])
    load_config(config, REGISTRY)
    manifest = yaml.safe_load((out / "schedulingprofile.yaml").read_text())
    assert (manifest["kind"], manifest["spec"]["poolRef"]["name"]) == ("SchedulingProfile", "llama")

    # the same command again: every run comes from the journal, the answer is the same
    runs = (out / "journal.jsonl").read_text()
    assert main(_args(tiny_file, base_file, out)) == 0
    assert (out / "journal.jsonl").read_text() == runs
    assert json.loads((out / "report.json").read_text()) == report


def test_a_journal_of_another_search_is_refused(
    tiny_file: Path, base_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(_args(tiny_file, base_file, out, "--trials=0")) == 0
    capsys.readouterr()

    assert main(_args(tiny_file, base_file, out, "--trials=0", "--train-seeds=0,2")) == 2

    assert "was written by a different search" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workloads=nope"], "kvroute tune: unknown workload 'nope'"),
        (["--train-seeds=a"], "kvroute tune: --train-seeds: not a list of integers: 'a'"),
        (["--peers=nobody"], "kvroute tune: unknown policy 'nobody'"),
        (["--space=SPACE"], "SPACE: weights.default/nope: profile 'default' has no pluginRef 'nope'"),
    ],
)
def test_errors_exit_2_with_a_message(
    tiny_file: Path, base_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("weights:\n  default/nope: {low: 1, high: 2}\n")
    extra = [item.replace("SPACE", str(space)) for item in extra]
    message = message.replace("SPACE", str(space))

    assert main(_args(tiny_file, base_file, tmp_path / "out", *extra)) == 2

    assert message in capsys.readouterr().err
