from __future__ import annotations

from kvroute.operator.resources.meta import Pool
from kvroute.operator.resources.service import service

from ..conftest import pool_object


def test_service_named_by_the_picker_ref_targets_the_ext_proc_port() -> None:
    pool = Pool.from_object(pool_object("llama", picker="llama-epp", port=9002))
    svc = service(pool, "ext-proc")
    assert svc is not None
    assert svc["metadata"]["name"] == "llama-epp"
    assert svc["metadata"]["ownerReferences"][0]["uid"] == pool.uid
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": "kvroute-router",
        "app.kubernetes.io/instance": "llama",
    }
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("grpc-ext-proc", 9002, "grpc-ext-proc"),
        ("grpc-health", 9003, "grpc-health"),
        ("http-metrics", 9090, "http-metrics"),
    ]


def test_the_picker_port_may_differ_from_the_container_port() -> None:
    svc = service(Pool.from_object(pool_object(port=443)), "ext-proc")
    assert svc is not None
    assert svc["spec"]["ports"][0] == {
        "name": "grpc-ext-proc",
        "port": 443,
        "targetPort": "grpc-ext-proc",
        "protocol": "TCP",
    }


def test_a_picker_port_equal_to_an_extra_port_is_not_exposed_twice() -> None:
    svc = service(Pool.from_object(pool_object(port=9090)), "ext-proc")
    assert svc is not None
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("grpc-ext-proc", 9090), ("grpc-health", 9003)]


def test_proxy_mode_targets_http() -> None:
    svc = service(Pool.from_object(pool_object(port=80)), "proxy")
    assert svc is not None
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [("http", 80, "http")]


def test_no_service_without_a_service_picker_ref() -> None:
    assert service(Pool.from_object(pool_object(picker=None)), "ext-proc") is None
