"""The `kvroute router` flags of upstream timeouts, retries and circuit breakers (docs/resilience.md).

Timeouts and retries are the proxy door's (the ext_proc door leaves both to Envoy); the circuit breakers are the
Director's, fed by either door.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from kvroute.router.proxy.upstream import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_FIRST_BYTE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_RETRY_STATUSES,
    DEFAULT_TOTAL_TIMEOUT,
    RetryPolicy,
    UpstreamSettings,
)
from kvroute.router.requestcontrol.breaker import BreakerSettings

Parse = Callable[[str], Any]

_RETRY = RetryPolicy()
_BREAKER = BreakerSettings()


def _statuses(text: str) -> frozenset[int]:
    try:
        codes = frozenset(int(code) for code in text.split(",") if code.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of HTTP status codes such as 429,503") from None
    if any(not 100 <= code < 600 for code in codes):
        raise argparse.ArgumentTypeError(f"{text!r} holds a number that is no HTTP status code")
    return codes


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def _multiplier(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be negative")
    return value


def add_flags(parser: argparse.ArgumentParser, duration: Parse, duration_or_zero: Parse, positive_int: Parse) -> None:
    add = parser.add_argument
    add(
        "--upstream-connect-timeout",
        type=duration_or_zero,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="DURATION",
        help=f"proxy: bound on connecting to a model server; 0 disables (default {DEFAULT_CONNECT_TIMEOUT:g}s)",
    )
    add(
        "--upstream-first-byte-timeout",
        type=duration_or_zero,
        default=DEFAULT_FIRST_BYTE_TIMEOUT,
        metavar="DURATION",
        help="proxy: a streamed request whose model server sends no status line for this long goes to the next "
        "fallback and counts as a failure of that server (a hung pod); non-streamed answers start only after the "
        f"generation and are bounded by the idle timeout; 0 disables (default {DEFAULT_FIRST_BYTE_TIMEOUT:g}s)",
    )
    add(
        "--upstream-idle-timeout",
        type=duration_or_zero,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="DURATION",
        help="proxy: fail a request when its model server sends no byte for this long once the request is sent "
        "(a non-streamed answer comes only after the whole generation); 0 disables "
        f"(default {DEFAULT_IDLE_TIMEOUT:g}s)",
    )
    add(
        "--upstream-total-timeout",
        type=duration_or_zero,
        default=DEFAULT_TOTAL_TIMEOUT,
        metavar="DURATION",
        help="proxy: bound on a whole request from its arrival, retries and streaming included; 0 disables "
        f"(default {DEFAULT_TOTAL_TIMEOUT:g}s)",
    )
    add(
        "--retry-max-retries",
        type=_count,
        default=_RETRY.max_retries,
        metavar="N",
        help="proxy: retries of a request on the scheduler's fallbacks before any byte reached the client "
        f"(connect errors, first-byte timeouts, --retry-on-status answers); 0 disables (default {_RETRY.max_retries})",
    )
    add(
        "--retry-on-status",
        type=_statuses,
        default=DEFAULT_RETRY_STATUSES,
        metavar="CODES",
        help="proxy: answers retried on the next fallback (default "
        f"{','.join(str(c) for c in sorted(DEFAULT_RETRY_STATUSES))})",
    )
    add(
        "--retry-initial-backoff",
        type=duration_or_zero,
        default=_RETRY.initial_backoff,
        metavar="DURATION",
        help=f"proxy: wait before the first retry (default {_RETRY.initial_backoff * 1000:g}ms)",
    )
    add(
        "--retry-max-backoff",
        type=duration_or_zero,
        default=_RETRY.max_backoff,
        metavar="DURATION",
        help=f"proxy: longest wait before a retry (default {_RETRY.max_backoff:g}s)",
    )
    add(
        "--retry-backoff-multiplier",
        type=_multiplier,
        default=_RETRY.multiplier,
        metavar="X",
        help=f"proxy: factor between successive backoffs (default {_RETRY.multiplier:g})",
    )
    add(
        "--retry-jitter-factor",
        type=_fraction,
        default=_RETRY.jitter,
        metavar="F",
        help=f"proxy: each backoff is scaled by a random factor in [1-F, 1+F] (default {_RETRY.jitter:g})",
    )
    add(
        "--breaker-failure-threshold",
        type=positive_int,
        default=_BREAKER.failure_threshold,
        metavar="N",
        help="consecutive failures (5xx or 429 answers, first-byte timeouts) that open an endpoint's circuit "
        f"breaker, ejecting it from the candidates; a connection failure opens it at once "
        f"(default {_BREAKER.failure_threshold})",
    )
    add(
        "--breaker-success-threshold",
        type=positive_int,
        default=_BREAKER.success_threshold,
        metavar="N",
        help=f"consecutive successful probes that close a half-open breaker (default {_BREAKER.success_threshold})",
    )
    add(
        "--breaker-open-duration",
        type=duration,
        default=_BREAKER.open_duration,
        metavar="DURATION",
        help="how long an open breaker keeps its endpoint out before one probe request may go "
        f"(default {_BREAKER.open_duration:g}s)",
    )


def upstream_settings(args: argparse.Namespace) -> UpstreamSettings:
    retry = RetryPolicy(
        max_retries=args.retry_max_retries,
        initial_backoff=args.retry_initial_backoff,
        max_backoff=args.retry_max_backoff,
        multiplier=args.retry_backoff_multiplier,
        jitter=args.retry_jitter_factor,
        statuses=args.retry_on_status,
    )
    return UpstreamSettings(
        connect_timeout=args.upstream_connect_timeout,
        first_byte_timeout=args.upstream_first_byte_timeout,
        idle_timeout=args.upstream_idle_timeout,
        total_timeout=args.upstream_total_timeout,
        retry=retry,
    )


def breaker_settings(args: argparse.Namespace) -> BreakerSettings:
    return BreakerSettings(
        failure_threshold=args.breaker_failure_threshold,
        success_threshold=args.breaker_success_threshold,
        open_duration=args.breaker_open_duration,
    )
