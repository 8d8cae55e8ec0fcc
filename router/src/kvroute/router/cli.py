"""`kvroute router ...`: run the router.

`--mode proxy` serves the OpenAI-compatible API itself, picking an endpoint for every request and forwarding it
(no gateway needed). `--mode ext-proc` is an Endpoint Picker for a gateway: Envoy's ext_proc gRPC protocol on
`--grpc-port` (TLS with a self-signed certificate unless `--secure-serving=false`), gRPC health on
`--grpc-health-port`, Prometheus on `--metrics-port` (see docs/extproc.md). `--mode both` runs the two front doors
on one router (one pool, one prefix index). Addresses default to 127.0.0.1, so a router started by hand is not
reachable from other machines; in a container use `--host 0.0.0.0`. The proxy's admin routes (`POST
/admin/reload`) are served only with `--admin-port`, on `--admin-host` (127.0.0.1 whatever `--host` is); client
connections are bounded by `--max-connections` and the header, keep-alive and body timeouts (docs/hardening.md).

Discovery: `--endpoints` lists the model servers (static); `--discovery kubernetes --pool-name NAME` follows the
Ready pods of that InferencePool instead, optionally with the configuration from a ConfigMap
(`--config-configmap NAME`, key `config.yaml`, hot-reloaded).

Workers: `--workers N` runs N router processes that share each door's port and act as one router (a fleet over
IPC, one metrics page, one reload; docs/fleet.md#workers). The default is the pod's CPU limit, 1 outside Kubernetes.

Fleet sync (docs/fleet.md): router replicas of one pool share their routing state, so that each routes as if it
saw every request. It is on when peers are given: `--fleet-peers HOST:PORT,...` (a fixed list; the replica's own
address may be in it), or with Kubernetes discovery `--fleet-peer-selector KEY=VALUE,...` (the pods of the
router's Deployment; `POD_NAME` and `POD_IP` from the downward API tell the router which pod is its own). Each
replica publishes on `--host`:`--fleet-port`.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from kvroute.router.config.models import parse_duration
from kvroute.router.fleet.defaults import DEFAULT_FLEET_PORT, DEFAULT_PEER_TIMEOUT, DEFAULT_SYNC_INTERVAL
from kvroute.router.proxy import flags as proxy_flags
from kvroute.router.requestcontrol.director import DEFAULT_MAX_BODY_BYTES
from kvroute.router.resilience_flags import add_flags, breaker_settings, upstream_settings

if TYPE_CHECKING:
    from kvroute.router.extproc.server import ExtProcSettings
    from kvroute.router.proxy.server import ProxyDoorSettings
    from kvroute.router.runtime.build import FleetOptions, KubernetesSettings, RouterSettings

MODES = ("proxy", "ext-proc", "both")
RESPONSE_MODES = ("full", "light")
DISCOVERIES = ("static", "kubernetes")


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


def _duration_or_zero(text: str) -> float:
    """A duration as for `_duration`, or 0 (off)."""
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass
    return _duration(text)


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 65535")
    return value


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
    add(
        "--mode",
        choices=MODES,
        default="proxy",
        help="front door: proxy (OpenAI-compatible HTTP; default), ext-proc (Envoy Endpoint Picker) or both",
    )
    add(
        "--endpoints",
        metavar="IP:PORT[;LABEL=V...],...",
        help="model-server endpoints (static discovery), e.g. 127.0.0.2:8000;role=decode,127.0.0.3:8000",
    )
    # Kubernetes discovery; the operator's router Deployment passes exactly these flags.
    add(
        "--discovery",
        choices=DISCOVERIES,
        help="where endpoints come from (default: static with --endpoints, kubernetes with --pool-name)",
    )
    add("--pool-name", metavar="NAME", help="InferencePool whose Ready pods are the endpoints (kubernetes discovery)")
    add("--pool-namespace", metavar="NS", help="namespace of the InferencePool (default: the router pod's namespace)")
    add(
        "--config-configmap",
        metavar="NAME",
        help="ConfigMap holding the configuration under key config.yaml, hot-reloaded (instead of --config)",
    )
    add("--kubeconfig", metavar="PATH", help="kubeconfig for the API server (default: the pod's service account)")
    add("--config", metavar="FILE", help="EndpointPickerConfig YAML, reloaded when it changes (default: built-in)")
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 in containers)")
    add("--port", type=_port, default=8080, help="proxy: HTTP port (default 8080)")
    add("--grpc-port", type=_port, default=9002, help="ext-proc: ext_proc gRPC port (default 9002)")
    add("--grpc-health-port", type=_port, default=9003, help="ext-proc: gRPC health port (default 9003)")
    add("--metrics-port", type=_port, default=9090, help="ext-proc: Prometheus /metrics port (default 9090)")
    add(
        "--secure-serving",
        type=_boolean,
        default=True,
        metavar="BOOL",
        help="ext-proc: serve TLS (default true; --secure-serving=false for plaintext)",
    )
    add("--cert-path", metavar="DIR", help="ext-proc: directory with tls.crt and tls.key (default: self-signed)")
    add(
        "--response-mode",
        choices=RESPONSE_MODES,
        default="full",
        help="ext-proc: full (every response chunk: exact token counts; default) or light (response headers and "
        "end of stream only: estimated counts, far less CPU); Envoy's processing_mode must match (docs/extproc.md)",
    )
    add(
        "--max-destinations",
        type=_positive_int,
        default=1,
        metavar="N",
        help="ext-proc: endpoints named in x-gateway-destination-endpoint, primary then fallbacks (default 1, "
        "what Envoy's ORIGINAL_DST cluster accepts)",
    )
    add(
        "--gie-conformance",
        action="store_true",
        help="ext-proc: honour the Gateway API Inference Extension conformance suite's test headers as its "
        "lightweight Endpoint Picker does (test-epp-endpoint-selection restricts the candidates; the response "
        "gets x-conformance-test-served-endpoint). It lets clients choose their endpoint: conformance runs only "
        "(default off; docs/extproc.md)",
    )
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
        "--fleet-peers",
        metavar="HOST:PORT,...",
        help="turn fleet sync on with these peer replicas (their --host:--fleet-port; this replica's own address "
        "may be listed): the replicas share routing decisions, in-flight load and completions (docs/fleet.md)",
    )
    add(
        "--fleet-peer-selector",
        metavar="KEY=VALUE,...",
        help="turn fleet sync on with the pods matching these labels in the pool's namespace as peers (Kubernetes "
        "discovery; the router's own pod, named by $POD_NAME or at $POD_IP, is left out)",
    )
    add(
        "--fleet-port",
        type=_port,
        metavar="PORT",
        help=f"fleet sync: port of this replica's publisher on --host, and of its peers' "
        f"(default {DEFAULT_FLEET_PORT})",
    )
    add(
        "--fleet-sync-interval",
        type=_duration_or_zero,
        metavar="DURATION",
        help="fleet sync: how often the records gathered are sent to the peers; 0 (the default): as soon as "
        "the event loop is free",
    )
    add(
        "--fleet-peer-timeout",
        type=_duration,
        metavar="DURATION",
        help="fleet sync: a peer silent this long is gone and its in-flight requests are released "
        f"(default {DEFAULT_PEER_TIMEOUT:g}s; peers send a heartbeat every second)",
    )
    add(
        "--replica-id",
        metavar="ID",
        help="fleet sync: this replica's name among its peers, unique in the fleet (default: $POD_NAME, else "
        "<hostname>-<pid>)",
    )
    add(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="router processes sharing the doors' ports and their routing state (default: the pod's CPU limit "
        "rounded down, 1 without one or outside Kubernetes); with fleet sync, worker i publishes on --fleet-port + i",
    )
    add(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log level (default info; nothing is logged per request at info)",
    )
    add_flags(parser, _duration, _duration_or_zero, _positive_int)
    proxy_flags.add_flags(parser, _duration, _port, _positive_int)
    parser.set_defaults(run=_run, parser=parser)


def _run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(args, parser)
    # Imported here so that `kvroute router --help` stays fast.
    from kvroute.router.runtime.supervisor import default_workers, run_workers, serve_settings

    workers = default_workers() if args.workers is None else args.workers
    if workers == 1:
        return serve_settings(settings)
    _check_workers(args, parser, workers)
    grace = settings.proxy.shutdown_grace if settings.proxy is not None else 10.0
    return run_workers(settings, workers, args.log_level, grace)


def _check_workers(args: argparse.Namespace, parser: argparse.ArgumentParser, workers: int) -> None:
    """Several workers share fixed ports: none may be 0, and worker i's fleet port (+ i) must be free."""
    ports: list[tuple[str, int]] = []
    if args.mode in ("proxy", "both"):
        ports.append(("--port", args.port))
    if args.mode in ("ext-proc", "both"):
        ports += [("--grpc-port", args.grpc_port), ("--grpc-health-port", args.grpc_health_port)]
        ports.append(("--metrics-port", args.metrics_port))
    for flag, value in ports:
        if value == 0:
            parser.error(f"--workers {workers} needs a fixed {flag}: the workers share it (0 picks a port per process)")
    if args.fleet_peers is None and args.fleet_peer_selector is None:
        return
    first = DEFAULT_FLEET_PORT if args.fleet_port is None else args.fleet_port
    if first == 0:
        parser.error(f"--workers {workers} needs a fixed --fleet-port: worker i publishes on it + i")
    last = first + workers - 1
    if last > 65535:
        parser.error(f"--fleet-port {first} + {workers} workers goes past port 65535")
    for flag, value in ports:
        if first <= value <= last:
            parser.error(f"{flag} {value} is one of the workers' fleet ports {first}-{last} (--fleet-port + i)")


def _settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RouterSettings:
    """The flags as `RouterSettings`; wrong combinations fail here, naming the flags."""
    from kvroute.router.runtime.build import RouterSettings

    if args.cert_path is not None and not args.secure_serving:
        parser.error("--cert-path needs --secure-serving=true")
    if args.gie_conformance and args.mode == "proxy":
        parser.error("--gie-conformance needs --mode ext-proc or both (the conformance suite drives a gateway)")
    kubernetes = _kubernetes(args, parser)
    text = None
    if args.config is not None:
        from kvroute.router.config.reload import ConfigTooLarge, read_config_file

        try:
            text = read_config_file(args.config, args.max_config_bytes)
        except ConfigTooLarge as exc:
            parser.error(f"--config: {exc} (--max-config-bytes)")
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"cannot read --config {args.config}: {exc}")
    return RouterSettings(
        endpoints=args.endpoints if kubernetes is None else None,
        kubernetes=kubernetes,
        config_text=text,
        config_path=args.config,
        max_body_bytes=args.max_body_bytes,
        max_config_bytes=args.max_config_bytes,
        scrape_interval=args.scrape_interval,
        proxy=_proxy(args, parser),
        extproc=_extproc(args),
        fleet=_fleet(args, parser, kubernetes is not None),
        breaker=breaker_settings(args),
    )


def _proxy(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ProxyDoorSettings | None:
    if args.mode not in ("proxy", "both"):
        if args.admin_port is not None:
            parser.error("--admin-port needs --mode proxy or both")
        return None
    from kvroute.router.proxy.server import ProxyDoorSettings

    return ProxyDoorSettings(
        host=args.host,
        port=args.port,
        upstream=upstream_settings(args),
        connections=proxy_flags.connection_limits(args),
        admin=proxy_flags.admin_settings(args, parser),
    )


def _extproc(args: argparse.Namespace) -> ExtProcSettings | None:
    if args.mode not in ("ext-proc", "both"):
        return None
    from kvroute.router.extproc.processor import ResponseMode
    from kvroute.router.extproc.server import ExtProcSettings

    return ExtProcSettings(
        host=args.host,
        port=args.grpc_port,
        health_port=args.grpc_health_port,
        metrics_port=args.metrics_port,
        secure_serving=args.secure_serving,
        cert_path=args.cert_path,
        response_mode=ResponseMode(args.response_mode),
        max_destinations=args.max_destinations,
        gie_conformance=args.gie_conformance,
    )


def _fleet(args: argparse.Namespace, parser: argparse.ArgumentParser, kubernetes: bool) -> FleetOptions | None:
    """Checks the fleet sync flags; None when sync is off (no peers given)."""
    tuning = ("--fleet-port", "--fleet-sync-interval", "--fleet-peer-timeout", "--replica-id")
    if args.fleet_peers is None and args.fleet_peer_selector is None:
        for flag in tuning:
            if getattr(args, flag[2:].replace("-", "_")) is not None:
                parser.error(f"{flag} needs --fleet-peers or --fleet-peer-selector")
        return None
    if args.fleet_peers is not None and args.fleet_peer_selector is not None:
        parser.error("give either --fleet-peers or --fleet-peer-selector, not both")
    if args.fleet_peer_selector is not None and not kubernetes:
        parser.error("--fleet-peer-selector needs Kubernetes discovery (--discovery kubernetes --pool-name NAME)")
    port = DEFAULT_FLEET_PORT if args.fleet_port is None else args.fleet_port
    used: list[tuple[str, int]] = []
    if args.mode in ("proxy", "both"):
        used.append(("--port", args.port))
    if args.mode in ("ext-proc", "both"):
        used += [("--grpc-port", args.grpc_port), ("--grpc-health-port", args.grpc_health_port)]
        used.append(("--metrics-port", args.metrics_port))
    for flag, value in used:
        if value == port != 0:
            parser.error(f"--fleet-port {port} is also the {flag}")
    from kvroute.router.runtime.build import FleetOptions

    return FleetOptions(
        peers=args.fleet_peers,
        peer_selector=args.fleet_peer_selector,
        host=args.host,
        port=port,
        interval=DEFAULT_SYNC_INTERVAL if args.fleet_sync_interval is None else args.fleet_sync_interval,
        peer_timeout=args.fleet_peer_timeout or DEFAULT_PEER_TIMEOUT,
        replica_id=args.replica_id,
    )


def _kubernetes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> KubernetesSettings | None:
    """Checks the discovery flags; the Kubernetes discovery asked for, None for static discovery."""
    discovery = args.discovery or ("kubernetes" if args.pool_name and not args.endpoints else "static")
    kubernetes_only = ("--pool-name", "--pool-namespace", "--config-configmap", "--kubeconfig")
    if discovery == "static":
        if not args.endpoints:
            parser.error("give --endpoints (static discovery) or --pool-name (Kubernetes discovery)")
        for flag in kubernetes_only:
            if getattr(args, flag[2:].replace("-", "_")) is not None:
                parser.error(f"{flag} needs --discovery kubernetes")
        return None
    if args.endpoints:
        parser.error("--endpoints is for static discovery; --discovery kubernetes finds the endpoints itself")
    if not args.pool_name:
        parser.error("--discovery kubernetes needs --pool-name")
    if args.config and args.config_configmap:
        parser.error("give either --config or --config-configmap, not both")
    from kvroute.router.runtime.build import KubernetesSettings

    return KubernetesSettings(
        pool_name=args.pool_name,
        namespace=args.pool_namespace,
        kubeconfig=args.kubeconfig,
        config_map=args.config_configmap,
    )
