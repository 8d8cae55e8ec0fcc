"""`kvroute bench overhead --parts scrape`: the exposition server's addresses, the table, one real short run."""

from __future__ import annotations

import math

import pytest

from kvroute.bench.overhead.cli import scrape_table
from kvroute.bench.overhead.exposition import Exposition, addresses, simulator_exposition
from kvroute.bench.overhead.scrape import ScrapeRow, run_scrape
from kvroute.cli import build_parser
from kvroute.router.datalayer.metrics_parser import ENGINES, parse_metrics


def test_addresses_fill_loopback_subnets_skipping_network_and_broadcast() -> None:
    hosts = addresses(1024)

    assert hosts[:2] == ["127.0.1.1", "127.0.1.2"]
    assert hosts[253:255] == ["127.0.1.254", "127.0.2.1"]
    assert hosts[-1] == "127.0.5.8"
    assert len(set(hosts)) == 1024


def test_a_changing_exposition_sets_new_load_gauges_on_every_request_and_nothing_else() -> None:
    body = simulator_exposition()
    gauges = (b"vllm:num_requests_waiting{", b"vllm:num_requests_running{", b"vllm:kv_cache_usage_perc{")

    def load(text: bytes) -> tuple[int | None, int | None, float | None]:
        parsed = parse_metrics(text, ENGINES["vllm"])
        return parsed.waiting, parsed.running, parsed.kv_usage

    def other_lines(text: bytes) -> list[bytes]:
        return [line for line in text.splitlines() if not line.startswith(gauges)]

    rendered = [Exposition(body).render(n) for n in (1, 2, 14, 102)]

    assert [load(text) for text in rendered] == [(1, 1, 0.01), (2, 2, 0.02), (0, 1, 0.14), (4, 11, 0.01)]
    assert all(other_lines(text) == other_lines(body) for text in rendered)


def test_a_changing_sglang_exposition_and_one_without_load_gauges() -> None:
    sglang = b"# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs 0.0\nsglang:num_running_reqs 0.0\n"
    other = b"# TYPE up gauge\nup 1\n"

    parsed = parse_metrics(Exposition(sglang + b"sglang:token_usage 0.0\n").render(3), ENGINES["sglang"])

    assert (parsed.waiting, parsed.running, parsed.kv_usage) == (3, 3, 0.03)
    assert Exposition(other).render(5) == other


def test_scrape_is_a_part_of_its_own_with_its_grid() -> None:
    args = build_parser(["bench", "overhead"]).parse_args(["bench", "overhead", "--parts", "scrape"])

    assert args.parts == ("scrape",)
    assert (args.scrape_endpoints, args.scrape_seconds) == ((16, 256, 1024), 5.0)


def test_scrape_table_rows() -> None:
    row = ScrapeRow(256, "adaptive", 5.0, 9.5, 31.25, 7.6, 1.2, 24.0, 61.5, 480, 2.5, True)
    changing = ScrapeRow(256, "fixed", 5.0, 20.0, 80.0, 9.0, 1.0, 20.0, 50.0, 480, 2.0, True, changing=1.0)
    failed = ScrapeRow(1024, "fixed", 0.0, *(math.nan,) * 6, 0, math.nan, True, "only 3 of 1024 endpoints fresh")

    lines = scrape_table([row, changing, failed]).splitlines()

    assert lines[2] == "| 256 | unchanged | adaptive | 9.5 | 31.2 | 7.6 | 1.2 | 24.0 / 61.5 | 2.5 | yes |"
    assert lines[3].startswith("| 256 | changing (100%) | fixed | 20.0 | 80.0 |")
    assert lines[4].endswith("did not run: only 3 of 1024 endpoints fresh |")


@pytest.mark.integration
async def test_a_short_run_scrapes_every_endpoint_off_the_serving_loop() -> None:
    rows = await run_scrape([16], port=18590, seconds=1.5)

    assert [(r.endpoints, r.changing, r.cadence, r.error) for r in rows] == [
        (16, 0.0, "adaptive", None),
        (16, 0.0, "fixed", None),
        (16, 1.0, "adaptive", None),
        (16, 1.0, "fixed", None),
    ]
    adaptive, fixed, changing_adaptive, changing_fixed = rows
    assert all(r.separate_thread for r in rows)
    assert 5 < fixed.scrapes_per_s_per_endpoint <= 21  # every 50 ms, minus a loaded machine's late timers
    assert adaptive.scrapes_per_s_per_endpoint < fixed.scrapes_per_s_per_endpoint  # idle ones every 150 ms
    # Load that changes on every scrape keeps the adaptive cadence at 50 ms.
    assert changing_adaptive.scrapes_per_s_per_endpoint > adaptive.scrapes_per_s_per_endpoint
    assert 5 < changing_fixed.scrapes_per_s_per_endpoint <= 21
    assert adaptive.age_samples > 50
    assert adaptive.age_p99_ms < 150
    assert all(0 < r.cpu_us_per_scrape < 5000 for r in rows)
