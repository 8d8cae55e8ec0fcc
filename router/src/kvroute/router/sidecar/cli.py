"""`kvroute sidecar`: the P/D sidecar of a decode pod (see `kvroute.router.sidecar.app` and docs/disaggregation.md).

It listens on `--host`:`--port` in front of the decode engine at `--decoder-url`. A request with
`x-prefiller-host-port` (set by kvroute's ext_proc Endpoint Picker, or llm-d's) is prefilled on that engine
first, then decoded locally with the transferred KV cache; any other request passes through.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from yarl import URL

from kvroute.router.config.models import parse_duration
from kvroute.router.requestcontrol.director import DEFAULT_MAX_BODY_BYTES
from kvroute.router.sidecar.app import DEFAULT_PREFILL_TIMEOUT, Sidecar, SidecarSettings, serve


def _duration(text: str) -> float:
    """Seconds, as a number ("0.5") or a Go duration ("500ms")."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 500ms, 30s or 2.5") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive duration")
    return seconds


def _decoder_url(text: str) -> URL:
    url = URL(text)
    if url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// URL")
    return url.with_path("").with_query(None)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def register(sub: Any) -> None:
    parser = sub.add_parser("sidecar", help="P/D sidecar in front of a decode engine", description=__doc__)
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 in containers)")
    add("--port", type=int, default=8000, help="port to listen on (default 8000)")
    add(
        "--decoder-url",
        type=_decoder_url,
        default=URL("http://127.0.0.1:8001"),
        metavar="URL",
        help="the local decode engine (default http://127.0.0.1:8001)",
    )
    add(
        "--prefill-timeout",
        type=_duration,
        default=DEFAULT_PREFILL_TIMEOUT,
        metavar="DURATION",
        help=f"longest wait for the prefill engine's answer, then 502 (default {DEFAULT_PREFILL_TIMEOUT:g}s)",
    )
    add("--connect-timeout", type=_duration, default=3.0, metavar="DURATION", help="connect timeout (default 3s)")
    add(
        "--idle-timeout",
        type=_duration,
        default=300.0,
        metavar="DURATION",
        help="longest silence of the decode engine within a request (default 300s)",
    )
    add(
        "--max-body-bytes",
        type=_positive,
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="N",
        help=f"largest request body; larger ones get 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )
    add("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log level (default info)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = SidecarSettings(
        decoder_url=args.decoder_url,
        prefill_timeout=args.prefill_timeout,
        connect_timeout=args.connect_timeout,
        idle_timeout=args.idle_timeout,
        max_body_bytes=args.max_body_bytes,
    )
    asyncio.run(serve(Sidecar(settings), args.host, args.port))
    return 0
