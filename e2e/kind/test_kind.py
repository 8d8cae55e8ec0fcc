"""The operator scenario of e2e/test_operator_e2e.py on a kind cluster, through pytest-kubernetes (see README.md).

Everything runs in the cluster from the repository's images: the operator installed by the chart, the router
Deployment it renders, simulator pods as the model servers and Envoy pods configured from
docs/envoy/kvroute-gateway.yaml. The test reaches Envoy and the routers' metrics through `kubectl port-forward`
on 127.0.0.1. One test function runs the steps in order, printing a step log.
"""

from __future__ import annotations

import json
import threading
import time
from functools import partial
from typing import Any

import pytest
from e2e.kind.support import (
    CHART,
    CHILDREN,
    CONFIG_MAP,
    ENVOY_IMAGE,
    MODEL,
    NODE_IMAGE,
    NS,
    OPERATOR_IMAGE,
    OPERATOR_NS,
    POOL,
    PROFILE,
    RELEASE,
    ROUTER,
    ROUTER_IMAGE,
    SERVICE,
    SIM_IMAGE,
    SIM_PORT,
    TAG,
    Cluster,
    StepLog,
    envoy_objects,
    kind_config,
    metric,
    post,
    profile,
    sim_pod,
)
from pytest_kubernetes.options import ClusterOptions
from pytest_kubernetes.providers import KindManagerBase

from tests.support import eventually_sync

# Creating the cluster alone takes minutes on a small machine; the whole scenario about ten.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

PODS = ("llm-a", "llm-b", "llm-c")
RELOADS = 'kvroute_config_reloads_total{result="success"}'
SHARED_PREFIX = "You are a careful assistant. Answer briefly and cite the manual. " * 30


def test_operator_scenario_on_kind(k8s: Any, capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    log = StepLog(capsys)
    # kind: a new cluster from the offline node image; external: the given kubeconfig (the config is ignored).
    config = tmp_path / "kind.yaml"
    config.write_text(json.dumps(kind_config(k8s.cluster_name, NODE_IMAGE)))
    if isinstance(k8s, KindManagerBase):
        assert NODE_IMAGE, "KVROUTE_KIND_NODE_IMAGE names the node image of e2e/kind/build-node-image.sh"
    k8s.create(ClusterOptions(provider_config=config, cluster_timeout=900), timeout=300)
    for image in (OPERATOR_IMAGE, ROUTER_IMAGE, SIM_IMAGE, ENVOY_IMAGE):
        k8s.load_image(image)  # `kind load docker-image`; a no-op for an external cluster
    cluster = Cluster(k8s)
    log("0 cluster created", f"{NODE_IMAGE or 'external'}; 4 images loaded")

    # 1. The chart: CRDs, RBAC, the operator.
    cluster.helm(
        *("install", RELEASE, str(CHART), "--namespace", OPERATOR_NS, "--create-namespace"),
        *("--wait", "--timeout", "5m"),
        *("--set", "operator.image.repository=kvroute/operator", "--set", f"operator.image.tag={TAG}"),
        *("--set", "router.image.repository=kvroute/router", "--set", f"router.image.tag={TAG}"),
    )
    cluster.kubectl("create", "namespace", NS)
    log("1 chart installed", "operator Deployment available")

    # 2. Pool and profile → children.
    pool = {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": POOL, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "llm"}},
            "targetPorts": [{"number": SIM_PORT}],
            "endpointPickerRef": {"name": SERVICE, "port": {"number": 9002}},
        },
    }
    cluster.apply(pool, profile())
    uid = (cluster.get("inferencepool", POOL) or {})["metadata"]["uid"]

    def children() -> dict[str, dict[str, Any]] | None:
        objs = {kind: cluster.get(kind, name) for kind, name in CHILDREN.items()}
        return {k: v for k, v in objs.items() if v is not None} if all(objs.values()) else None

    eventually_sync(children, timeout=120, interval=1.0, message="the pool's children")
    eventually_sync(
        lambda: (c := cluster.condition("Accepted")) and c["status"] == "True",
        timeout=120,
        interval=1.0,
        message="Accepted=True",
    )

    # The pool may be reconciled before its profile exists (children from the built-in default configuration):
    # the children to check are those of the profile's configuration, whose hash its status reports.
    def profile_children() -> dict[str, dict[str, Any]] | None:
        objs = children()
        config_hash = ((cluster.get("schedulingprofile", PROFILE) or {}).get("status") or {}).get("configHash")
        live_hash = objs and objs["configmap"]["metadata"]["annotations"]["kvroute.io/config-hash"]
        return objs if objs and config_hash == live_hash else None

    objs = eventually_sync(profile_children, timeout=120, interval=1.0, message="the profile's configuration")
    assert objs is not None
    for kind, obj in objs.items():
        refs = obj["metadata"]["ownerReferences"]
        assert [(r["kind"], r["uid"], r["controller"]) for r in refs] == [("InferencePool", uid, True)], kind
    assert [p["type"] for p in cluster.config()["plugins"]] == [
        "prefix-cache-scorer",
        "queue-scorer",
        "max-score-picker",
    ]
    args = objs["deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["router", "--mode"] and "--config-configmap" in args
    assert [p["port"] for p in objs["service"]["spec"]["ports"]] == [9002, 9003, 9090]
    assert all(rule["verbs"] == ["get", "list", "watch"] for rule in objs["role"]["rules"])
    before = {k: (cluster.get(k, n) or {})["metadata"]["resourceVersion"] for k, n in CHILDREN.items()}
    cluster.kubectl("annotate", "-n", NS, "schedulingprofile", PROFILE, "e2e.kvroute.io/touch=1", "--overwrite")
    time.sleep(5)
    after = {k: (cluster.get(k, n) or {})["metadata"]["resourceVersion"] for k, n in CHILDREN.items()}
    assert {k: v for k, v in after.items() if k != "deployment"} == {
        k: v for k, v in before.items() if k != "deployment"
    }
    log("2 children rendered", "owned by the pool, Accepted=True, no-op reconcile")

    # 3. Model servers.
    cluster.apply(*(sim_pod(name) for name in PODS))
    cluster.kubectl("wait", "-n", NS, "--for=condition=Ready", "pod", "-l", "app=llm", "--timeout=180s")
    log("3 sim pods Ready", ", ".join(PODS))

    # 4. The router, as the operator runs it; least privilege.
    cluster.kubectl("rollout", "status", "-n", NS, f"deployment/{ROUTER}", "--timeout=180s")
    subject = f"system:serviceaccount:{NS}:{ROUTER}"
    can = cluster.kubectl("auth", "can-i", "get", "secrets", "-n", NS, "--as", subject, check=False)
    assert can.stdout.strip() == "no"
    log("4 router rolled out", "secrets: no")

    # 5. Envoy in front, traffic.
    router_ip = (cluster.get("service", SERVICE) or {})["spec"]["clusterIP"]
    pod_ips = [(cluster.get("pod", name) or {})["status"]["podIP"] for name in PODS]
    cluster.apply(*envoy_objects("envoy", router_ip, pod_ips))
    cluster.kubectl("wait", "-n", NS, "--for=condition=Ready", "pod/envoy", "--timeout=180s")
    router_pod = cluster.router_pods()[0]["metadata"]["name"]
    with cluster.port_forward("pod/envoy", 8081) as envoy_port, cluster.port_forward(f"pod/{router_pod}", 9090) as mp:
        url = f"http://127.0.0.1:{envoy_port}/v1/completions"
        metrics_url = f"http://127.0.0.1:{mp}/metrics"

        def complete(prompt: str) -> tuple[int, str | None]:
            status, headers = post(url, {"model": MODEL, "prompt": prompt, "max_tokens": 2})
            return status, headers.get("x-inference-pod")

        eventually_sync(
            lambda: complete("warm up")[0] == 200, timeout=120, interval=1.0, message="a request through Envoy"
        )
        results = [complete(f"request {i} " + "x" * 64) for i in range(20)]
        assert all(status == 200 for status, _ in results), results
        sticky = [complete(SHARED_PREFIX + f"question {i}") for i in range(10)]
        assert all(s == 200 for s, _ in sticky) and len({p for _, p in sticky}) == 1, sticky
        log("5 traffic through Envoy", f"20 x 200; shared prefix -> {sticky[0][1]}")

        # 6. Profile edit under load → hot reload, nothing fails.
        restarts = cluster.kubectl(
            "get", "pod", router_pod, "-n", NS, "-o", "jsonpath={.status.containerStatuses[0].restartCount}"
        ).stdout
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:
            for i in range(2000):
                if stop.is_set():
                    return
                statuses.append(complete(f"load {i}")[0])

        before_reloads = metric(metrics_url, RELOADS)
        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        try:
            cluster.apply(profile(prefix_weight=5))
            eventually_sync(
                lambda: cluster.config()["schedulingProfiles"][0]["plugins"][0]["weight"] == 5,
                timeout=120,
                interval=1.0,
                message="the new weight in the ConfigMap",
            )
            eventually_sync(
                lambda: metric(metrics_url, RELOADS) > before_reloads,
                timeout=120,
                interval=1.0,
                message="the router to reload",
            )
            at_reload = len(statuses)  # the load goes on across the reload, not only up to it
            eventually_sync(
                lambda: len(statuses) >= at_reload + 20, timeout=60, interval=0.2, message="20 requests after it"
            )
        finally:
            stop.set()
            worker.join(timeout=60)
        assert statuses and all(s == 200 for s in statuses), statuses
        after_restarts = cluster.kubectl(
            "get", "pod", router_pod, "-n", NS, "-o", "jsonpath={.status.containerStatuses[0].restartCount}"
        ).stdout
        assert after_restarts == restarts
        log("6 hot reload under load", f"{len(statuses)} requests, 0 failed")

        # 7. A deleted pod gets no traffic a second later.
        victim = sticky[0][1] or PODS[0]
        cluster.kubectl("delete", "pod", victim, "-n", NS, "--grace-period=0", "--wait=false")
        time.sleep(1)
        served = {complete(SHARED_PREFIX + f"after {i}")[1] for i in range(20)}
        assert victim not in served, served
        log("7 deleted pod gets no traffic", f"{victim} gone, served by {sorted(map(str, served))}")

    # 8. Two router replicas share their routing state (fleet sync): each behind an Envoy of its own, the second
    # sends the first one's prompts to the same pods once it has applied the first one's records.
    cluster.apply(profile(prefix_weight=5, replicas=2))

    def fleet() -> list[dict[str, Any]] | None:
        pods = cluster.router_pods()
        synced = len(pods) == 2 and all("--fleet-port" in pod["spec"]["containers"][0]["args"] for pod in pods)
        return pods if synced else None

    routers = eventually_sync(fleet, timeout=300, interval=2.0, message="two Ready router pods with fleet sync")
    assert routers is not None
    live = [ip for name in PODS if (pod := cluster.get("pod", name)) and (ip := pod["status"].get("podIP"))]
    for name, router in zip(("envoy-a", "envoy-b"), routers, strict=True):
        cluster.apply(*envoy_objects(name, router["status"]["podIP"], live))
    cluster.kubectl("wait", "-n", NS, "--for=condition=Ready", "pod/envoy-a", "pod/envoy-b", "--timeout=180s")
    a, b = (router["metadata"]["name"] for router in routers)
    with (
        cluster.port_forward("pod/envoy-a", 8081) as envoy_a,
        cluster.port_forward("pod/envoy-b", 8081) as envoy_b,
        cluster.port_forward(f"pod/{a}", 9090) as metrics_a,
        cluster.port_forward(f"pod/{b}", 9090) as metrics_b,
    ):
        metrics = [f"http://127.0.0.1:{port}/metrics" for port in (metrics_a, metrics_b)]
        eventually_sync(
            lambda: all(metric(u, "kvroute_fleet_peers") == 1 for u in metrics),
            timeout=120,
            interval=1.0,
            message="each router to hear its peer",
        )

        def through(port: int, prompt: str) -> str | None:
            status, headers = post(f"http://127.0.0.1:{port}/v1/completions", {"model": MODEL, "prompt": prompt})
            assert status == 200, status
            return headers.get("x-inference-pod")

        def answers(port: int) -> bool:
            return post(f"http://127.0.0.1:{port}/v1/completions", {"model": MODEL, "prompt": "hi"})[0] == 200

        for port in (envoy_a, envoy_b):
            eventually_sync(partial(answers, port), timeout=120, interval=1.0, message="a request through each Envoy")
        prompts = [f"fleet {i} " + "a question nobody asked before. " * 20 for i in range(6)]
        through_a = [through(envoy_a, prompt) for prompt in prompts]
        applied: list[float] = []

        def settled() -> bool:  # b applied a's records, nothing more arrives, no request of a's is open
            applied.append(metric(metrics[1], "kvroute_fleet_records_applied_total"))
            stable = len(applied) > 5 and applied[-6] == applied[-1] >= 2 * len(prompts)
            return stable and metric(metrics[1], "kvroute_fleet_peer_requests_open") == 0

        eventually_sync(settled, timeout=120, interval=0.5, message="router b to apply router a's decisions")
        through_b = [through(envoy_b, prompt) for prompt in prompts]
    assert through_b == through_a and set(through_a) <= set(PODS), (through_a, through_b)
    log("8 two replicas share state", f"{len(prompts)} prompts via {a} then {b} -> {sorted(map(str, set(through_a)))}")

    # 9. Invalid profiles.
    config_before = cluster.get("configmap", CONFIG_MAP) or {}
    undeclared = profile(prefix_weight=5)
    undeclared["spec"]["schedulingProfiles"][0]["plugins"][0]["pluginRef"] = "undeclared-scorer"
    rejected = cluster.apply(undeclared, check=False)
    assert rejected.returncode != 0 and "pluginRef must name a plugin" in rejected.stderr
    bad = profile(prefix_weight=5)
    bad["spec"]["plugins"][0]["parameters"] = {"blockSizeTokens": "lots"}
    cluster.apply(bad)
    condition = eventually_sync(
        lambda: (c := cluster.condition("Accepted")) and c["status"] == "False" and c,
        timeout=120,
        interval=1.0,
        message="Accepted=False",
    )
    assert condition
    assert condition["message"].startswith("spec.plugins[0].parameters.blockSizeTokens")
    config_after = cluster.get("configmap", CONFIG_MAP) or {}
    assert config_after["metadata"]["resourceVersion"] == config_before["metadata"]["resourceVersion"]
    cluster.apply(profile(prefix_weight=5))
    eventually_sync(
        lambda: (c := cluster.condition("Accepted")) and c["status"] == "True",
        timeout=120,
        interval=1.0,
        message="Accepted=True again",
    )
    log("9 invalid profiles", "CEL rejected; semantic Accepted=False; ConfigMap unchanged")

    # 10. Printer columns.
    output = cluster.kubectl("get", "schedulingprofiles", "-n", NS).stdout
    with capsys.disabled():
        print(f"\n{output}", end="")
    assert output.splitlines()[0].split() == ["NAME", "POOL", "ACCEPTED", "READY", "AGE"]
    log("10 printer columns", "NAME POOL ACCEPTED READY AGE")

    # 11. Deleting the pool collects the children.
    cluster.kubectl("delete", "inferencepool", POOL, "-n", NS)
    eventually_sync(
        lambda: all(cluster.get(k, n) is None for k, n in CHILDREN.items()),
        timeout=120,
        interval=1.0,
        message="the children to be collected",
    )
    log("11 pool deleted", "children garbage-collected")

    # 12. `helm uninstall` leaves nothing of the release: the operator namespace holds only what every namespace
    # has, no cluster-scoped RBAC remains, and the only CRDs left are the three the chart keeps on purpose
    # (deleting a CRD deletes every object of its kind in the cluster; charts/kvroute/values.yaml).
    cluster.helm("uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait", "--timeout", "5m")
    namespaced = "all,configmap,secret,serviceaccount,role,rolebinding,lease"
    eventually_sync(
        lambda: (
            set(cluster.names(namespaced, "-n", OPERATOR_NS))
            == {"configmap/kube-root-ca.crt", "serviceaccount/default"}
        ),
        timeout=120,
        interval=1.0,
        message=f"{OPERATOR_NS} to hold nothing of the release",
    )
    assert cluster.names("clusterrole,clusterrolebinding", "-l", f"app.kubernetes.io/instance={RELEASE}") == []
    crds = {name for name in cluster.names("crd") if "kvroute" in name or "inference" in name}
    assert crds == {
        "customresourcedefinition.apiextensions.k8s.io/schedulingprofiles.kvroute.io",
        "customresourcedefinition.apiextensions.k8s.io/inferencepools.inference.networking.k8s.io",
        "customresourcedefinition.apiextensions.k8s.io/inferenceobjectives.inference.networking.x-k8s.io",
    }, crds
    log("12 helm uninstall", "nothing of the release left; the 3 CRDs kept by design")
