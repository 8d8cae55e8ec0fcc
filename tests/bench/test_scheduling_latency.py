from __future__ import annotations

import pytest

from kvroute.bench.scheduling_latency import CONFIGURATIONS, configurations, run
from kvroute.cli import build_parser, main
from kvroute.router.config.loader import load_config
from kvroute.router.plugins.registry import REGISTRY


def parse(*argv: str) -> object:
    args = ["bench", "scheduling", *argv]
    return build_parser(args).parse_args(args)


def test_defaults_are_the_plugin_grid_with_every_configuration() -> None:
    args = parse()
    assert (args.endpoints, args.chars, args.iterations) == ((64, 256), (8_000, 32_000), 2000)
    assert args.config == ("default", "default+no-hit-lru+active-blocks", "recommended")


def test_flags_choose_cells_and_configurations(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("--endpoints", "256", "--chars", "32000", "--config", "recommended", "--iterations", "500")
    assert (args.endpoints, args.chars, args.config, args.iterations) == ((256,), (32_000,), ("recommended",), 500)
    with pytest.raises(SystemExit):
        parse("--config", "recommended,fastest")
    assert "choose among default, default+no-hit-lru+active-blocks, recommended" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--endpoints", "0")
    assert "'0': every value must be at least 1" in capsys.readouterr().err


def test_every_configuration_loads_through_the_routers_loader() -> None:
    documents = configurations()
    assert tuple(documents) == CONFIGURATIONS
    for document in documents.values():
        assert load_config(document, REGISTRY).scheduler.profiles


def test_rows_per_cell_are_the_prefix_scorer_then_each_chosen_configuration() -> None:
    rows = list(run((4,), (1_000, 20_000), ("recommended", "default"), iterations=20))

    assert [(label, n, chars) for label, n, chars, *_ in rows] == [
        ("prefix score, 16 blocks", 4, 1_000),  # 1,000 characters in blocks of 64
        ("schedule() recommended", 4, 1_000),
        ("schedule() default", 4, 1_000),
        ("prefix score, 256 blocks", 4, 20_000),  # the scorer's default cap, then every block
        ("prefix score, 313 blocks", 4, 20_000),
        ("schedule() recommended", 4, 20_000),
        ("schedule() default", 4, 20_000),
    ]
    for _, _, _, p50, p99, cpu_p99 in rows:
        assert 0 < p50 <= p99
        assert cpu_p99 > 0


def test_the_command_prints_one_line_per_row(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "scheduling", "--endpoints", "2", "--chars", "300", "--config", "recommended"]
    assert main([*argv, "--iterations", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["measurement", "endpoints", "chars", "p50", "us", "p99", "us", "p99", "cpu"]
    assert [line.split()[:-3] for line in lines[1:]] == [
        ["prefix", "score,", "5", "blocks", "2", "300"],
        ["schedule()", "recommended", "2", "300"],
    ]
