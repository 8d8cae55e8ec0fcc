from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest
from kvroute.router.plugins.filters.role import DecodeFilter, PrefillFilter

REQUEST = LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="", body={}, headers={})


def pod(n: int, role: str | None) -> Endpoint:
    return Endpoint.create(f"10.0.0.{n}", 8000, labels={"llm-d.ai/role": role} if role else {})


DECODE = pod(1, "decode")
PREFILL = pod(2, "prefill")
BOTH = pod(3, "both")
PREFILL_DECODE = pod(4, "prefill-decode")
UNLABELED = pod(5, None)
POOL = [DECODE, PREFILL, BOTH, PREFILL_DECODE, UNLABELED]


def test_decode_filter_keeps_decode_and_dual_role_and_unlabeled_pods() -> None:
    kept = DecodeFilter("d", DecodeFilter.Params()).filter(CycleState(), REQUEST, POOL)
    assert kept == [DECODE, BOTH, PREFILL_DECODE, UNLABELED]


def test_prefill_filter_keeps_only_prefill_pods() -> None:
    assert PrefillFilter("p", PrefillFilter.Params()).filter(CycleState(), REQUEST, POOL) == [PREFILL]
