"""The router Deployment of a pool.

The pods run `kvroute router` with Kubernetes discovery of the pool and the pool's ConfigMap as configuration,
which they watch through the API: a configuration change is a hot reload, never a rollout (the config hash is an
annotation of the Deployment, not of its pod template). Rollouts (image, mode, resources) surge one pod before
removing one, so a pool always has a ready router. Containers run as non-root on a read-only root filesystem with
every capability dropped, no privilege escalation and the runtime's default seccomp profile.

With fleet sync (`RouterSpec.syncs_fleet`: more than one replica, unless the profile says otherwise) the replicas
share their routing state: each publishes on port 9005 and subscribes to the pods of its own Deployment, which it
finds with `--fleet-peer-selector` (the Deployment's selector labels; the Role already lets it watch pods) and
tells apart from itself by `POD_NAME` and `POD_IP` from the downward API. The port is not on the Service: peers
connect pod to pod. Turning sync on or off changes the pod template, so it rolls the routers.

Each pod runs `--workers N` router processes (`router_workers`): N is the container's CPU limit, or its CPU
request without a limit, rounded down to whole cores, at least 1 (the default resources give 1). Worker i of a
pod that syncs with its peers publishes on port 9005 + i.
"""

from __future__ import annotations

from typing import Any

from kvroute.operator.models import RouterSpec
from kvroute.operator.resources.meta import ANNOTATION_CONFIG_HASH, Pool, labels, object_meta, selector_labels
from kvroute.operator.resources.quantity import canonical, value_of

EXT_PROC_PORT = 9002  # Envoy ext_proc (gRPC)
HEALTH_PORT = 9003  # gRPC health: services "liveness" and "readiness"
METRICS_PORT = 9090  # Prometheus, ext-proc mode
PROXY_PORT = 8080  # OpenAI-compatible API, /healthz, /readyz and /metrics, proxy mode
FLEET_PORT = 9005  # fleet sync between the router replicas (ZMQ PUB), pod to pod
RUN_AS = 65532  # an unprivileged uid/gid with no entry in the image's /etc/passwd

DEFAULT_RESOURCES: dict[str, Any] = {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


def front_door_port(mode: str) -> tuple[str, int]:
    """The named container port the Service's endpoint-picker port targets."""
    return ("grpc-ext-proc", EXT_PROC_PORT) if mode == "ext-proc" else ("http", PROXY_PORT)


def container_ports(mode: str) -> list[tuple[str, int]]:
    if mode == "ext-proc":
        return [front_door_port(mode), ("grpc-health", HEALTH_PORT), ("http-metrics", METRICS_PORT)]
    return [front_door_port(mode)]


def router_args(pool: Pool, router: RouterSpec) -> list[str]:
    args = [
        "router",
        "--mode",
        router.mode,
        "--discovery",
        "kubernetes",
        "--pool-name",
        pool.name,
        "--pool-namespace",
        pool.namespace,
        "--config-configmap",
        pool.config_map_name,
        "--host",
        "0.0.0.0",
        "--log-level",
        router.log_level,
        "--workers",
        str(router_workers(router)),
    ]
    if router.syncs_fleet:
        peers = ",".join(f"{key}={value}" for key, value in sorted(selector_labels(pool).items()))
        args += ["--fleet-peer-selector", peers, "--fleet-port", str(FLEET_PORT)]
    return args


def router_workers(router: RouterSpec) -> int:
    """Router processes per pod: whole cores of the CPU limit, else of the CPU request; at least 1."""
    resources = _resources(router)
    cpu = resources.get("limits", {}).get("cpu") or resources.get("requests", {}).get("cpu")
    cores = None if cpu is None else value_of(cpu)
    return 1 if cores is None else max(1, int(cores))


def _fleet_env() -> list[dict[str, Any]]:
    """The pod's name and IP, by which a router leaves itself out of its peers."""
    return [
        {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}
        for name, path in (("POD_NAME", "metadata.name"), ("POD_IP", "status.podIP"))
    ]


def _probes(mode: str) -> dict[str, Any]:
    if mode == "ext-proc":
        live: dict[str, Any] = {"grpc": {"port": HEALTH_PORT, "service": "liveness"}}
        ready: dict[str, Any] = {"grpc": {"port": HEALTH_PORT, "service": "readiness"}}
    else:
        live = {"httpGet": {"path": "/healthz", "port": "http"}}
        ready = {"httpGet": {"path": "/readyz", "port": "http"}}
    return {
        "startupProbe": {**live, "periodSeconds": 1, "failureThreshold": 60},
        "livenessProbe": {**live, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
        "readinessProbe": {**ready, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 2},
    }


def _resources(router: RouterSpec) -> dict[str, Any]:
    """As the API server will store them (canonical quantities, no empty lists), so that the live Deployment
    contains the manifest and a reconcile with nothing to change writes nothing."""
    if router.resources is None:
        return DEFAULT_RESOURCES
    lists = router.resources.model_dump(exclude_none=True)
    return {
        kind: {name: canonical(value) for name, value in values.items()} for kind, values in lists.items() if values
    }


def deployment(
    pool: Pool, router: RouterSpec, config_hash: str, *, image: str, image_pull_policy: str = "IfNotPresent"
) -> dict[str, Any]:
    ports = container_ports(router.mode) + ([("fleet-sync", FLEET_PORT)] if router.syncs_fleet else [])
    container: dict[str, Any] = {
        "name": "router",
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": ["kvroute"],
        "args": router_args(pool, router),
        **({"env": _fleet_env()} if router.syncs_fleet else {}),
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports],
        **_probes(router.mode),
        "resources": _resources(router),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    spec: dict[str, Any] = {}
    if router.replicas is not None:
        spec["replicas"] = router.replicas
    spec |= {
        "selector": {"matchLabels": selector_labels(pool)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {
            "metadata": {"labels": labels(pool)},
            "spec": {
                "serviceAccountName": pool.router_name,
                "automountServiceAccountToken": True,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 30,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": RUN_AS,
                    "runAsGroup": RUN_AS,
                    "fsGroup": RUN_AS,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [container],
                "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
            },
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(pool, pool.router_name, {ANNOTATION_CONFIG_HASH: config_hash}),
        "spec": spec,
    }
