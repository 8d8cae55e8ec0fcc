"""The Service the pool's `endpointPickerRef` names: the gateway reaches the routers through it.

Its `endpointPickerRef.port.number` goes to the router's front door (9002 ext_proc, or 8080 in proxy mode); in
ext-proc mode it also exposes the gRPC health port and the metrics port, unless the picker port already uses
that number. A pool whose endpointPickerRef is absent or names something other than a Service gets no Service.
"""

from __future__ import annotations

from typing import Any

from kvroute.operator.resources.deployment import container_ports, front_door_port
from kvroute.operator.resources.meta import Pool, object_meta, selector_labels


def service(pool: Pool, mode: str) -> dict[str, Any] | None:
    name, port = pool.service_name, pool.service_port
    if name is None or port is None:
        return None
    front_name, _ = front_door_port(mode)
    ports = [{"name": front_name, "port": port, "targetPort": front_name, "protocol": "TCP"}]
    ports += [
        {"name": extra, "port": number, "targetPort": extra, "protocol": "TCP"}
        for extra, number in container_ports(mode)
        if extra != front_name and number != port
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(pool, name),
        "spec": {"type": "ClusterIP", "selector": selector_labels(pool), "ports": ports},
    }
