from __future__ import annotations

import yaml

from kvroute.operator.context import OperatorContext
from kvroute.operator.reconcile import children, contains, controlled_by, plan, pool_of
from kvroute.operator.resources.meta import Pool
from kvroute.operator.settings import OperatorSettings
from kvroute.router.config.builder import Registry
from kvroute.router.config.defaults import DEFAULT_CONFIG_TEXT

from .conftest import ROUTER_IMAGE, pool_object, profile_object, profile_spec


def _context(registry: Registry) -> OperatorContext:
    return OperatorContext(OperatorSettings(router_image=ROUTER_IMAGE), registry)


def test_contains_compares_only_the_fields_the_operator_sets() -> None:
    live = {
        "metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "y": "2"}},
        "spec": {"ports": [{"port": 1, "protocol": "TCP"}]},
    }
    assert contains(live, {"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"ports": [{"port": 1}]}})
    assert not contains(live, {"metadata": {"labels": {"x": "2"}}})
    assert not contains(live, {"spec": {"ports": [{"port": 1}, {"port": 2}]}})  # a list is compared whole
    assert not contains(live, {"spec": {"replicas": 1}})
    assert not contains({"a": "1"}, {"a": 1})


def test_controlled_by_needs_the_pools_uid_as_controller() -> None:
    pool = Pool.from_object(pool_object())
    ours = {"metadata": {"ownerReferences": [{"uid": pool.uid, "controller": True}]}}
    assert controlled_by(ours, pool)
    assert not controlled_by({"metadata": {}}, pool)
    assert not controlled_by({"metadata": {"ownerReferences": [{"uid": pool.uid}]}}, pool)
    assert not controlled_by({"metadata": {"ownerReferences": [{"uid": "other", "controller": True}]}}, pool)


def test_pool_of() -> None:
    assert pool_of(profile_object(spec=profile_spec("llama"))) == "llama"
    assert pool_of({"spec": {}}) is None


def test_plan_without_profile_is_the_default(registry: Registry) -> None:
    pool = Pool.from_object(pool_object())
    chosen = plan(_context(registry), pool, None)
    assert yaml.safe_load(chosen.config.text) == yaml.safe_load(DEFAULT_CONFIG_TEXT)
    assert chosen.errors == ()
    assert chosen.router.mode == "ext-proc"


def test_plan_of_an_invalid_profile_falls_back_to_the_default_and_keeps_the_errors(registry: Registry) -> None:
    pool = Pool.from_object(pool_object())
    spec = profile_spec(router={"mode": "proxy"})
    spec["plugins"][1]["type"] = "nope-scorer"
    chosen = plan(_context(registry), pool, profile_object(spec=spec))
    assert chosen.errors == ('spec.plugins[1].type: unknown plugin type "nope-scorer"',)
    assert chosen.router.mode == "ext-proc"  # nothing of a rejected profile is used
    assert chosen.config == plan(_context(registry), pool, None).config


def test_children_in_apply_order(registry: Registry) -> None:
    ctx = _context(registry)
    pool = Pool.from_object(pool_object())
    manifests = children(ctx, pool, plan(ctx, pool, profile_object(spec=profile_spec(router={"replicas": 2}))))
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("ConfigMap", "llama-kvroute-config"),
        ("ServiceAccount", "llama-kvroute"),
        ("Role", "llama-kvroute"),
        ("RoleBinding", "llama-kvroute"),
        ("Deployment", "llama-kvroute"),
        ("Service", "llama-epp"),
    ]
    deployment = manifests[4]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == ROUTER_IMAGE
    assert deployment["metadata"]["annotations"] == manifests[0]["metadata"]["annotations"]
