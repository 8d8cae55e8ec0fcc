"""`kvroute router` flags of the proxy's client side: connection limits and the admin server (docs/hardening.md)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvroute.router.config.reload import MAX_CONFIG_BYTES
from kvroute.router.proxy.connections import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    ConnectionLimits,
)

if TYPE_CHECKING:
    from kvroute.router.proxy.admin import AdminSettings

Parse = Callable[[str], object]


def add_flags(parser: argparse.ArgumentParser, duration: Parse, port: Parse, positive_int: Parse) -> None:
    add = parser.add_argument
    add(
        "--max-connections",
        type=positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="proxy: client connections open at once; at the cap the oldest idle one is closed for a newcomer, "
        f"and a newcomer gets 503 when none is idle (default {DEFAULT_MAX_CONNECTIONS}; keep it well below the "
        "file descriptor limit, each request also holds an upstream connection)",
    )
    add(
        "--header-read-timeout",
        type=duration,
        default=DEFAULT_HEADER_TIMEOUT,
        metavar="DURATION",
        help="proxy: a new connection must send its first request's headers within this, or it is closed "
        f"(default {DEFAULT_HEADER_TIMEOUT:g}s)",
    )
    add(
        "--keepalive-timeout",
        type=duration,
        default=DEFAULT_KEEPALIVE_TIMEOUT,
        metavar="DURATION",
        help="proxy: a connection is closed when its next request's headers are not complete this long after the "
        f"last response (default {DEFAULT_KEEPALIVE_TIMEOUT:g}s)",
    )
    add(
        "--body-read-timeout",
        type=duration,
        default=DEFAULT_BODY_TIMEOUT,
        metavar="DURATION",
        help="proxy: a request body must arrive whole within this, or the answer is 408 and the connection is "
        f"closed (default {DEFAULT_BODY_TIMEOUT:g}s)",
    )
    add(
        "--admin-port",
        type=port,
        metavar="PORT",
        help="proxy: serve the admin routes (POST /admin/reload) on this port of --admin-host; they are never on "
        "the API port (default: no admin routes)",
    )
    add(
        "--admin-host",
        default="127.0.0.1",
        metavar="HOST",
        help="proxy: address of the admin routes (default 127.0.0.1, whatever --host is)",
    )
    add(
        "--max-config-bytes",
        type=positive_int,
        default=MAX_CONFIG_BYTES,
        metavar="N",
        help=f"largest --config file read, at startup, by the file watch and by POST /admin/reload (which "
        f"answers 413 beyond it; default {MAX_CONFIG_BYTES})",
    )


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    return ConnectionLimits(
        max_connections=args.max_connections,
        header_timeout=args.header_read_timeout,
        keepalive_timeout=args.keepalive_timeout,
        body_timeout=args.body_read_timeout,
    )


def admin_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> AdminSettings | None:
    if args.admin_port is None:
        return None
    if args.admin_port == args.port != 0 and args.admin_host == args.host:
        parser.error("--admin-port must differ from --port: admin routes are never on the API port")
    from kvroute.router.proxy.admin import AdminSettings

    return AdminSettings(port=args.admin_port, host=args.admin_host, max_config_bytes=args.max_config_bytes)
