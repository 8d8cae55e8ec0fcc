"""Expositions recorded from vLLM's and SGLang's own metric code (tests/fixtures/upstream,
scripts/golden/record_upstream.py): what the parser reads from them, engines (data-parallel ranks) aggregated."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvroute.router.datalayer.metrics_parser import ENGINES, ParsedMetrics, parse_metrics

UPSTREAM = Path(__file__).parents[2] / "fixtures" / "upstream"
VLLM = UPSTREAM / "vllm-0.34.0" / "metrics"
SGLANG = UPSTREAM / "sglang-0.5.23" / "metrics"


def test_vllm_one_engine() -> None:
    parsed = parse_metrics((VLLM / "dp1.txt").read_text(), ENGINES["vllm"])

    assert parsed == ParsedMetrics(waiting=2, running=3, kv_usage=0.25, block_size=16, num_gpu_blocks=8192)


def test_vllm_two_engines_are_one_endpoint() -> None:
    parsed = parse_metrics((VLLM / "dp2.txt").read_text(), ENGINES["vllm"])

    # waiting 2 + 7, running 3 + 5; usage (0.25 x 8192 + 0.9 x 8192) / (2 x 8192); blocks of both engines.
    assert parsed == ParsedMetrics(
        waiting=9, running=8, kv_usage=pytest.approx(0.575), block_size=16, num_gpu_blocks=16384
    )


def test_sglang_page_gauges_give_block_size_and_count_and_ranks_are_aggregated() -> None:
    parsed = parse_metrics((SGLANG / "dp2.txt").read_text(), ENGINES["sglang"])

    # sglang:page_size 64 and sglang:num_pages 2048 per rank (no sglang:cache_config_info in 0.5.23).
    assert parsed == ParsedMetrics(
        waiting=9, running=8, kv_usage=pytest.approx(0.575), block_size=64, num_gpu_blocks=4096
    )


def test_sglang_priority_breakdowns_and_other_tp_ranks_are_not_counted_twice() -> None:
    text = (
        'sglang:num_queue_reqs{dp_rank="0",priority="",tp_rank="0"} 5\n'
        'sglang:num_queue_reqs{dp_rank="0",priority="1",tp_rank="0"} 3\n'
        'sglang:num_queue_reqs{dp_rank="0",priority="2",tp_rank="0"} 2\n'
        'sglang:num_queue_reqs{dp_rank="0",priority="",tp_rank="1"} 5\n'
        'sglang:num_queue_reqs{dp_rank="1",priority="",tp_rank="0"} 1\n'
        'sglang:token_usage{dp_rank="0",tp_rank="0"} 0.5\n'
        'sglang:token_usage{dp_rank="1",tp_rank="0"} 0.1\n'
        'sglang:num_pages{dp_rank="0",tp_rank="0"} 300\n'
        'sglang:num_pages{dp_rank="1",tp_rank="0"} 100\n'
    )

    parsed = parse_metrics(text, ENGINES["sglang"])

    assert (parsed.waiting, parsed.num_gpu_blocks) == (6, 400)
    assert parsed.kv_usage == pytest.approx((0.5 * 300 + 0.1 * 100) / 400)  # block-weighted: 0.4
