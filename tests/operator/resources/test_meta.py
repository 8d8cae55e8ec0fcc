from __future__ import annotations

import re

from kvroute.operator.resources.meta import Pool, bounded, labels, object_meta, owner_reference, selector_labels

from ..conftest import NAMESPACE, pool_object

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_child_names_derive_from_the_pool_name() -> None:
    pool = Pool.from_object(pool_object("llama"))
    assert (pool.router_name, pool.config_map_name) == ("llama-kvroute", "llama-kvroute-config")
    assert (pool.service_name, pool.service_port) == ("llama-epp", 9002)


def test_long_names_are_bounded_unique_and_valid() -> None:
    a, b = "p" * 70 + "a", "p" * 70 + "b"
    names = {bounded(f"{a}-kvroute"), bounded(f"{b}-kvroute")}
    assert len(names) == 2
    for name in names:
        assert len(name) == 63
        assert _DNS_LABEL.match(name), name
    assert bounded("short") == "short"


def test_truncation_never_leaves_a_dot_or_dash_before_the_hash() -> None:
    name = bounded("a" * 51 + ".-" + "b" * 20)
    assert name.startswith("a" * 51 + "-")
    assert len(name) == 62


def test_labels_and_selector() -> None:
    pool = Pool.from_object(pool_object("llama"))
    assert selector_labels(pool) == {"app.kubernetes.io/name": "kvroute-router", "app.kubernetes.io/instance": "llama"}
    assert labels(pool) == {
        "app.kubernetes.io/name": "kvroute-router",
        "app.kubernetes.io/instance": "llama",
        "app.kubernetes.io/component": "endpoint-picker",
        "app.kubernetes.io/part-of": "kvroute",
        "app.kubernetes.io/managed-by": "kvroute-operator",
        "kvroute.io/pool": "llama",
    }


def test_a_long_pool_name_fits_in_label_values() -> None:
    pool = Pool.from_object(pool_object("x" * 100))
    assert all(len(value) <= 63 for value in labels(pool).values())


def test_owner_reference_makes_the_pool_the_controller() -> None:
    obj = pool_object("llama")
    pool = Pool.from_object(obj)
    assert owner_reference(pool) == {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "name": "llama",
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    meta = object_meta(pool, "x", {"a": "b"})
    assert meta["namespace"] == NAMESPACE
    assert meta["annotations"] == {"a": "b"}
    assert meta["ownerReferences"] == [owner_reference(pool)]


def test_pool_without_service_picker_has_no_service() -> None:
    assert Pool.from_object(pool_object(picker=None)).service_name is None
    obj = pool_object()
    obj["spec"]["endpointPickerRef"]["kind"] = "Gateway"
    assert Pool.from_object(obj).service_name is None
