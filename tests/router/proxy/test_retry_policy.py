"""The retry backoff: exponential, capped, with jitter around it."""

from __future__ import annotations

import random

import pytest

from kvroute.router.proxy.upstream import RetryPolicy


def test_the_backoff_doubles_up_to_its_cap_without_jitter() -> None:
    policy = RetryPolicy(initial_backoff=0.05, max_backoff=0.3, multiplier=2.0, jitter=0.0)
    rng = random.Random(0)

    assert [policy.backoff(n, rng) for n in range(4)] == pytest.approx([0.05, 0.1, 0.2, 0.3])


def test_jitter_scales_the_backoff_within_its_fraction() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.2)
    rng = random.Random(1)

    delays = [policy.backoff(1, rng) for _ in range(200)]

    assert min(delays) >= 0.2 * 0.8 and max(delays) <= 0.2 * 1.2
    assert max(delays) - min(delays) > 0.05  # they do spread


def test_a_jitter_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="fraction"):
        RetryPolicy(jitter=1.5)
