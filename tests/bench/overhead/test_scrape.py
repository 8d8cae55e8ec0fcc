"""`kvroute bench overhead --parts scrape`: the exposition server's addresses, the table, one real short run."""

from __future__ import annotations

import math

import pytest

from kvroute.bench.overhead.cli import scrape_table
from kvroute.bench.overhead.exposition import addresses
from kvroute.bench.overhead.scrape import ScrapeRow, run_scrape
from kvroute.cli import build_parser


def test_addresses_fill_loopback_subnets_skipping_network_and_broadcast() -> None:
    hosts = addresses(1024)

    assert hosts[:2] == ["127.0.1.1", "127.0.1.2"]
    assert hosts[253:255] == ["127.0.1.254", "127.0.2.1"]
    assert hosts[-1] == "127.0.5.8"
    assert len(set(hosts)) == 1024


def test_scrape_is_a_part_of_its_own_with_its_grid() -> None:
    args = build_parser(["bench", "overhead"]).parse_args(["bench", "overhead", "--parts", "scrape"])

    assert args.parts == ("scrape",)
    assert (args.scrape_endpoints, args.scrape_seconds) == ((16, 256, 1024), 5.0)


def test_scrape_table_rows() -> None:
    row = ScrapeRow(256, "adaptive", 5.0, 9.5, 31.25, 7.6, 1.2, 24.0, 61.5, 480, 2.5, True)
    failed = ScrapeRow(1024, "fixed", 0.0, *(math.nan,) * 6, 0, math.nan, True, "only 3 of 1024 endpoints fresh")

    lines = scrape_table([row, failed]).splitlines()

    assert lines[2] == "| 256 | adaptive | 9.5 | 31.2 | 7.6 | 1.2 | 24.0 / 61.5 | 2.5 | yes |"
    assert lines[3].endswith("did not run: only 3 of 1024 endpoints fresh |")


@pytest.mark.integration
async def test_a_short_run_scrapes_every_endpoint_off_the_serving_loop() -> None:
    rows = await run_scrape([16], port=18590, seconds=1.5)

    assert [(r.endpoints, r.cadence, r.error) for r in rows] == [(16, "adaptive", None), (16, "fixed", None)]
    adaptive, fixed = rows
    assert all(r.separate_thread for r in rows)
    assert 5 < fixed.scrapes_per_s_per_endpoint <= 21  # every 50 ms, minus a loaded machine's late timers
    assert adaptive.scrapes_per_s_per_endpoint < fixed.scrapes_per_s_per_endpoint  # idle ones every 150 ms
    assert adaptive.age_samples > 50
    assert adaptive.age_p99_ms < 150
    assert 0 < adaptive.cpu_us_per_scrape < 5000
