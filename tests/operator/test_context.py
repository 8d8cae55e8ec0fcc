from __future__ import annotations

from kvroute.operator.context import OperatorContext
from kvroute.operator.settings import OperatorSettings
from kvroute.router.config.builder import Registry

from .conftest import profile_object


def test_status_only_modifications_are_recognised(registry: Registry) -> None:
    ctx = OperatorContext(OperatorSettings(), registry)
    profile = profile_object(generation=3)
    assert not ctx.unchanged(profile, "MODIFIED")  # never reconciled
    ctx.reconciled(profile, None, ("ml", "llama"))
    assert ctx.unchanged(profile, "MODIFIED")
    assert not ctx.unchanged(profile, None)  # a relisting (operator restart, peering takeover) always reconciles
    assert not ctx.unchanged(
        profile_object(generation=4) | {"metadata": profile["metadata"] | {"generation": 4}}, "MODIFIED"
    )
    assert ctx.previous_pool(profile["metadata"]["uid"]) == ("ml", "llama")
    ctx.reconciled(profile, "DELETED")
    assert ctx.previous_pool(profile["metadata"]["uid"]) is None
    assert not ctx.unchanged(profile, "MODIFIED")


def test_objects_without_generation_are_always_reconciled(registry: Registry) -> None:
    ctx = OperatorContext(OperatorSettings(), registry)
    body = {"metadata": {"uid": "u"}}
    ctx.reconciled(body, None)
    assert not ctx.unchanged(body, "MODIFIED")


async def test_one_lock_per_pool(registry: Registry) -> None:
    ctx = OperatorContext(OperatorSettings(), registry)
    lock = ctx.lock(("ml", "a"))
    assert ctx.lock(("ml", "a")) is lock
    assert ctx.lock(("ml", "b")) is not lock
