"""Pods to endpoints: Ready, not terminating, with an IPv4 address; one endpoint per target port."""

from __future__ import annotations

from typing import Any

from kvroute.router.datalayer.kubernetes.pods import endpoints_for, pod_view
from kvroute.router.datalayer.kubernetes.selector import LabelSelector
from kvroute.router.framework.endpoint import Role

APP = LabelSelector.from_spec({"matchLabels": {"app": "llm"}})


def test_a_ready_pod_gives_one_endpoint_per_target_port_with_its_identity(make_pod: Any) -> None:
    pod = make_pod("llm-0", "127.0.0.11", labels={"app": "llm", "llm-d.ai/role": "decode"})

    endpoints = endpoints_for([pod_view(pod)], (8000, 8001), APP)

    assert [e.id for e in endpoints] == ["127.0.0.11:8000", "127.0.0.11:8001"]
    for endpoint in endpoints:
        assert (endpoint.pod_name, endpoint.namespace) == ("llm-0", "ns")
        assert dict(endpoint.labels) == {"app": "llm", "llm-d.ai/role": "decode"}
        assert endpoint.role is Role.DECODE


def test_only_ready_running_pods_with_an_address_serve(make_pod: Any) -> None:
    pods = [
        make_pod("ready", "127.0.0.11"),
        make_pod("not-ready", "127.0.0.12", ready=False),
        make_pod("terminating", "127.0.0.13", terminating=True),
        make_pod("no-ip", None),
    ]
    no_conditions = make_pod("starting", "127.0.0.14")
    del no_conditions["status"]["conditions"]
    pods.append(no_conditions)

    endpoints = endpoints_for([pod_view(p) for p in pods], (8000,), APP)

    assert [e.pod_name for e in endpoints] == ["ready"]


def test_pods_the_selector_does_not_match_are_left_out(make_pod: Any) -> None:
    pods = [make_pod("a", "127.0.0.11"), make_pod("b", "127.0.0.12", labels={"app": "other"})]

    assert [e.pod_name for e in endpoints_for(map(pod_view, pods), (8000,), APP)] == ["a"]


def test_match_expressions_select_pods(make_pod: Any) -> None:
    selector = LabelSelector.from_spec(
        {"matchLabels": {"app": "llm"}, "matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["x"]}]}
    )
    pods = [
        make_pod("a", "127.0.0.11", labels={"app": "llm", "role": "y"}),
        make_pod("b", "127.0.0.12", labels={"app": "llm", "role": "x"}),
        make_pod("c", "127.0.0.13", labels={"app": "llm"}),
    ]

    assert [e.pod_name for e in endpoints_for(map(pod_view, pods), (8000,), selector)] == ["a", "c"]


def test_endpoints_are_ordered_by_pod_name_then_port(make_pod: Any) -> None:
    pods = [make_pod("b", "127.0.0.12"), make_pod("a", "127.0.0.11")]

    endpoints = endpoints_for(map(pod_view, pods), (9000, 8000), APP)

    assert [e.id for e in endpoints] == ["127.0.0.11:9000", "127.0.0.11:8000", "127.0.0.12:9000", "127.0.0.12:8000"]


def test_two_pods_on_one_address_keep_the_first_pod_by_name(make_pod: Any) -> None:
    pods = [make_pod("b", "127.0.0.11"), make_pod("a", "127.0.0.11")]

    endpoints = endpoints_for(map(pod_view, pods), (8000,), APP)

    assert [(e.id, e.pod_name) for e in endpoints] == [("127.0.0.11:8000", "a")]


def test_an_ipv4_address_is_taken_from_pod_ips_when_pod_ip_is_ipv6(make_pod: Any) -> None:
    dual = make_pod("dual", "127.0.0.11")
    dual["status"]["podIP"] = "fd00::11"
    dual["status"]["podIPs"] = [{"ip": "fd00::11"}, {"ip": "127.0.0.11"}]
    only_v6 = make_pod("v6", "127.0.0.12")
    only_v6["status"]["podIP"] = "fd00::12"
    only_v6["status"]["podIPs"] = [{"ip": "fd00::12"}]

    endpoints = endpoints_for(map(pod_view, [dual, only_v6]), (8000,), APP)

    assert [e.id for e in endpoints] == ["127.0.0.11:8000"]


def test_malformed_pods_read_as_not_serving() -> None:
    views = [pod_view({}), pod_view({"metadata": {"name": "x", "labels": ["no"]}, "status": {"conditions": "?"}})]

    assert [v.serving for v in views] == [False, False]
    assert dict(views[1].labels) == {}
