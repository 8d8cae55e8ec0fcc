"""Named, calibrated engine profiles: capacity and the step-time model of one model server.

Step time = `step_overhead_s`
          + `prefill_per_token_s` x prompt tokens computed in the step
          + `decode_per_seq_s` x sequences decoding in the step
          + `decode_per_context_token_s` x context tokens those sequences attend over.

Where the numbers come from (Llama-3.1-8B-Instruct, bf16, one H100 SXM 80 GB, vLLM defaults):
- KV bytes per token = 2 (K, V) x 32 layers x 8 KV heads x 128 dims x 2 bytes = 131,072 B. With
  `gpu_memory_utilization` 0.9 (72 GiB), minus 15 GiB of weights and ~4 GiB of activations / CUDA graphs, ~53 GiB
  remain for KV: 53 GiB / 128 KiB = 434k tokens = 27,136 blocks of 16 tokens.
- Decode floor: every step reads all weights once, 16.06 GB / 3.35 TB/s (H100 SXM HBM3 bandwidth) = 4.8 ms, plus
  ~1.2 ms of scheduling, sampling and launch overhead -> 6 ms; reading the KV of one context token costs
  131,072 B / 3.35 TB/s = 0.039 us. This gives the 6-15 ms inter-token latency reported for 7-8B models on H100.
- Prefill: 2 x 8.03e9 FLOPs per token at ~45% MFU of the H100's 989 TFLOPs dense bf16 = 36 us per token
  (~28k prompt tokens/s), which puts a 1-2k-token TTFT in the 60-120 ms range published for this class of GPU.
- KV transfer for P/D: 131,072 B per token over a 400 Gb/s (50 GB/s) RDMA NIC = 2.6 us per token, 1 ms setup.
- `max_num_batched_tokens` 8192 and `max_num_seqs` 256 are vLLM's defaults for online serving on an H100.

The 70B profile applies the same method to Llama-3.1-70B on 4 x H100 with tensor parallelism 4 (327,680 B of KV
per token, 141 GB of weights, 13.4 TB/s of aggregate bandwidth, ~40% MFU for the all-reduce-bound prefill).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    num_gpu_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 131_072
    max_loras: int = 4
    step_overhead_s: float = 6e-3
    prefill_per_token_s: float = 36e-6
    decode_per_seq_s: float = 30e-6
    decode_per_context_token_s: float = 0.039e-6
    kv_transfer_setup_s: float = 1e-3
    kv_transfer_per_token_s: float = 2.6e-6

    def step_time(self, prefill_tokens: int, decode_seqs: int, decode_context_tokens: int) -> float:
        return (
            self.step_overhead_s
            + self.prefill_per_token_s * prefill_tokens
            + self.decode_per_seq_s * decode_seqs
            + self.decode_per_context_token_s * decode_context_tokens
        )

    def with_overrides(self, **overrides: Any) -> Profile:
        """A copy with some fields changed (unknown fields raise TypeError)."""
        return replace(self, **overrides)


PROFILES: dict[str, Profile] = {
    "llama-3.1-8b-h100": Profile(name="llama-3.1-8b-h100", num_gpu_blocks=27_136),
    "llama-3.1-70b-4xh100": Profile(
        name="llama-3.1-70b-4xh100",
        num_gpu_blocks=24_576,
        step_overhead_s=13e-3,
        prefill_per_token_s=88e-6,
        decode_per_seq_s=60e-6,
        decode_per_context_token_s=0.024e-6,
        kv_transfer_per_token_s=6.5e-6,
    ),
    # Small cache and batch, same timing as the 8B profile: makes eviction and preemption easy to reach in tests
    # and demos.
    "tiny": Profile(name="tiny", num_gpu_blocks=256, max_num_seqs=8, max_num_batched_tokens=1024, max_model_len=4096),
}

DEFAULT_PROFILE = "llama-3.1-8b-h100"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
