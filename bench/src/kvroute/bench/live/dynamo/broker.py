"""The ZMQ broker of Dynamo's event plane: KV events and load reports pass through it, on local sockets only.

Run as a standalone script (standard library and pyzmq only). Without a broker, every Dynamo publisher (each
worker's KV events and load reports) binds its own PUB socket on all interfaces (`tcp://0.0.0.0:0`;
`DYN_EVENT_PLANE_HOST` only sets the address it advertises). With `DYN_ZMQ_BROKER_URL` naming this broker,
publishers connect to its XSUB socket and subscribers (the router) to its XPUB socket; the launcher gives it
`ipc://` endpoints (unix sockets), so the event plane opens no TCP port at all.

`GET /health` on `--health-host:--health-port` answers 200 once both sockets are bound. SIGTERM or SIGINT stops
the proxy and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import zmq

# Generous queues: a burst of KV events must not be dropped while the router drains them.
HIGH_WATER_MARK = 100_000
_CONTROL = "inproc://broker-control"


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet: no line per health check
        return


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xsub", required=True, help="endpoint publishers connect to, e.g. ipc://@events-in")
    parser.add_argument("--xpub", required=True, help="endpoint subscribers connect to")
    parser.add_argument("--health-host", default="127.0.0.1")
    parser.add_argument("--health-port", type=int, required=True)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())

    context = zmq.Context()
    xsub, xpub = context.socket(zmq.XSUB), context.socket(zmq.XPUB)
    control, steer = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    for socket in (xsub, xpub, control, steer):
        socket.setsockopt(zmq.LINGER, 0)
    xsub.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    xpub.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    xsub.bind(args.xsub)
    xpub.bind(args.xpub)
    control.bind(_CONTROL)
    steer.connect(_CONTROL)
    # The proxy blocks in C, where no Python signal handler runs; it lives in a thread and is steered to stop.
    proxy = threading.Thread(target=zmq.proxy_steerable, args=(xsub, xpub, None, control), daemon=True)
    proxy.start()
    health = ThreadingHTTPServer((args.health_host, args.health_port), _Health)
    threading.Thread(target=health.serve_forever, daemon=True).start()
    try:
        while not stop.wait(0.5) and proxy.is_alive():
            pass
    finally:
        steer.send(b"TERMINATE")
        proxy.join(5)
        health.shutdown()
        health.server_close()
        context.destroy(linger=0)


if __name__ == "__main__":
    main()
