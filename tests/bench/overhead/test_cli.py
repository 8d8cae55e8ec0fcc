from __future__ import annotations

import pytest

from kvroute.bench.overhead.cli import memory_table, proxy_table, scheduling_table
from kvroute.bench.overhead.memory import MemoryRow
from kvroute.bench.overhead.proxy import ProxyRun
from kvroute.bench.overhead.scheduling import Cell
from kvroute.cli import build_parser, main


def parse(*argv: str) -> object:
    args = ["bench", "overhead", *argv]
    return build_parser(args).parse_args(args)


def test_defaults_cover_the_whole_grid_and_both_concurrencies() -> None:
    args = parse()
    assert args.parts == ("scheduling", "proxy", "memory")
    assert (args.endpoints, args.chars) == ((16, 64, 256, 1024), (1_000, 8_000, 32_000, 128_000))
    assert (args.concurrency, args.requests) == ((1, 32), (2000, 10000))
    assert args.routers == ("kvroute", "sglang-router", "vllm-router")


def test_bad_lists_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--parts", "scheduling,latency")
    expected = "choose among scheduling, proxy, memory, scrape, stacks (got 'scheduling,latency')"
    assert expected in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--endpoints", "16,0")
    assert "'16,0': every value must be at least 1" in capsys.readouterr().err


def test_one_request_count_per_concurrency(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "overhead", "--parts", "proxy", "--concurrency", "1,8,32", "--requests", "10,10"])
    assert "--requests needs one count per --concurrency value" in capsys.readouterr().err


def test_scheduling_table_puts_profiles_side_by_side() -> None:
    cells = [Cell("default", 16, 1000, 100, 45.04, 83.6, 84.5), Cell("recommended", 16, 1000, 100, 34.2, 69.7, 63.6)]
    assert scheduling_table(cells).splitlines() == [
        "| endpoints | prompt chars | default p50 / p99 / CPU p99 µs | recommended p50 / p99 / CPU p99 µs |",
        "|---:|---:|---:|---:|",
        "| 16 | 1,000 | 45.0 / 83.6 / 84.5 | 34.2 / 69.7 / 63.6 |",
    ]


def test_proxy_table_shows_numbers_and_the_router_that_did_not_run() -> None:
    nan = float("nan")
    runs = [
        ProxyRun("kvroute", "0.1.0", 32, 10_000, 0, 1234.4, 950.0, 4100.2, 380.4, 47.0, 4.5),
        ProxyRun("vllm-router", "", 0, 0, 0, nan, nan, nan, None, None, None, "RouterUnavailable: not | installed"),
    ]
    lines = proxy_table(runs).splitlines()
    assert lines[2] == "| kvroute 0.1.0 | 32 | 10,000 | 1,234 | 950 | 4,100 | 380 | 47 | 4.5 | 0 |"
    assert (
        lines[3] == "| vllm-router | — | — | — | — | — | — | — | — | did not run: RouterUnavailable: not / installed |"
    )


def test_memory_table_reports_bytes_per_entry_and_per_hash() -> None:
    row = MemoryRow(endpoints=16, owners=4, entries=1000, hashes=250, bytes_total=120_000)
    assert memory_table([row]).splitlines()[2] == "| 16 | 4 | 1,000 | 250 | 0.1 | 120 | 480 |"
