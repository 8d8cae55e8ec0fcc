from __future__ import annotations

from kvroute.bench.live.servers import ServerCounters, parse_counters

EXPOSITION = """# HELP vllm:request_success_total Finished requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="length",model_name="m"} 7.0
vllm:request_success_total{finished_reason="stop",model_name="m"} 2.0
vllm:request_success_created{finished_reason="stop",model_name="m"} 1.7e9
vllm:prefix_cache_queries_total{model_name="m"} 1000.0
vllm:prefix_cache_hits_total{model_name="m"} 640.0
vllm:num_preemptions_total{model_name="m"} 1.0
vllm:generation_tokens_total{model_name="m"} 90.0
vllm:num_requests_waiting{model_name="m"} 3.0
"""


def test_counters_sum_every_label_set_and_ignore_other_families() -> None:
    assert parse_counters(EXPOSITION) == ServerCounters(
        requests=9, prefix_queries=1000, prefix_hits=640, preemptions=1, output_tokens=90
    )


def test_missing_families_count_zero_and_differences_are_per_field() -> None:
    assert parse_counters("") == ServerCounters()
    after = ServerCounters(requests=10, prefix_queries=50, prefix_hits=20, preemptions=1, output_tokens=7)
    before = ServerCounters(requests=4, prefix_queries=10, prefix_hits=5, preemptions=0, output_tokens=2)
    assert after - before == ServerCounters(6, 40, 15, 1, 5)
