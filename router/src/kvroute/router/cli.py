"""`kvroute router ...`: run the router.

`--mode proxy` serves the OpenAI-compatible API itself, picking an endpoint for every request and forwarding it
(no gateway needed). The address defaults to 127.0.0.1, so a router started by hand is not reachable from other
machines (its `/admin/reload` route included); in a container use `--host 0.0.0.0`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from kvroute.router.config.models import parse_duration
from kvroute.router.requestcontrol.director import DEFAULT_MAX_BODY_BYTES

MODES = ("proxy", "ext-proc")


def _duration(text: str) -> float:
    """Seconds, as a number ("0.05") or a Go duration ("50ms")."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            return parse_duration(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 50ms, 1s or 0.05") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return seconds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def register(sub: Any) -> None:
    parser = sub.add_parser("router", help="KV-cache-aware router", description=__doc__)
    add = parser.add_argument
    add("--mode", choices=MODES, default="proxy", help="front door: proxy (OpenAI-compatible HTTP; default)")
    add(
        "--endpoints",
        required=True,
        metavar="IP:PORT[;LABEL=V...],...",
        help="model-server endpoints (static discovery), e.g. 127.0.0.2:8000;role=decode,127.0.0.3:8000",
    )
    add("--config", metavar="FILE", help="EndpointPickerConfig YAML, reloaded when it changes (default: built-in)")
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 in containers)")
    add("--port", type=int, default=8080, help="port to listen on (default 8080)")
    add(
        "--max-body-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"largest request body accepted; larger ones get 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )
    add(
        "--scrape-interval",
        type=_duration,
        metavar="DURATION",
        help="metrics scrape interval, e.g. 50ms (default: the config's metrics.scrapeInterval)",
    )
    add(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log level (default info; nothing is logged per request at info)",
    )
    parser.set_defaults(run=_run, parser=parser)


def _run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if args.mode != "proxy":
        parser.error(f"--mode {args.mode} is not available yet; use --mode proxy")
    if not 0 <= args.port < 65536:
        parser.error("--port must be between 0 and 65535")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported here so that `kvroute router --help` stays fast.
    import prometheus_client

    from kvroute.router.config.errors import ConfigError
    from kvroute.router.datalayer.static_discovery import parse_endpoints
    from kvroute.router.plugins.registry import REGISTRY
    from kvroute.router.proxy.server import ProxyServer, ProxySettings

    try:
        endpoints = parse_endpoints(args.endpoints)
    except ValueError as exc:
        parser.error(str(exc))
    text = None
    if args.config is not None:
        try:
            text = Path(args.config).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"cannot read --config {args.config}: {exc}")
    settings = ProxySettings(
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        config_path=args.config,
        scrape_interval=args.scrape_interval,
    )
    try:
        server = ProxyServer(endpoints, REGISTRY, settings, config_text=text)
    except ConfigError as exc:
        print(f"kvroute router: the configuration is invalid:\n{exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        parser.error(str(exc))
    # No `_created` series: one per labelled child would double the size of /metrics for nothing.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(server))
    else:
        uvloop.run(_serve(server))
    return 0


async def _serve(server: Any) -> None:
    """Runs until SIGINT or SIGTERM, then shuts down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
