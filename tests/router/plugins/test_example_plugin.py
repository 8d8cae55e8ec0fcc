"""The worked example of docs/plugins.md: a plugin written, registered, configured and tested end to end.

`label-preference-scorer` prefers endpoints by the value of one label, in the order given:

    score_e = 1 - r / len(values)     when e's label `label` is values[r]
    score_e = 0                       when e has another value or no such label

e.g. values [h100, a100] score an h100 endpoint 1.0, an a100 endpoint 0.5, anything else 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from kvroute.router.config.aliases import PluginRegistry
from kvroute.router.config.loader import load_config
from kvroute.router.framework import ApiKind, CycleState, Endpoint, LLMRequest, Scorer
from kvroute.router.plugins.params import PluginParams
from kvroute.router.plugins.registry import REGISTRY


class LabelPreferenceScorer(Scorer):
    type_name = "label-preference-scorer"

    class Params(PluginParams):
        label: str = Field(min_length=1, description="The endpoint label to read.")
        values: tuple[str, ...] = Field(min_length=1, description="Preferred values, best first.")

    def __init__(self, name: str, params: Params) -> None:
        super().__init__(name, params)
        self._label = params.label
        self._rank = {value: r for r, value in enumerate(params.values)}
        self._count = len(params.values)

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        ranks = {e.id: self._rank.get(e.labels.get(self._label, "")) for e in endpoints}
        return {eid: 0.0 if r is None else 1.0 - r / self._count for eid, r in ranks.items()}


MY_REGISTRY = PluginRegistry(
    {**REGISTRY.types, LabelPreferenceScorer.type_name: LabelPreferenceScorer}, REGISTRY.aliases
)

DOCUMENT = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: label-preference-scorer
  parameters: {label: gpu, values: [h100, a100]}
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: label-preference-scorer
    weight: 2
  - pluginRef: queue-scorer
"""

H100 = Endpoint.create("10.0.0.1", 8000, labels={"gpu": "h100"})
A100 = Endpoint.create("10.0.0.2", 8000, labels={"gpu": "a100"})
OTHER = Endpoint.create("10.0.0.3", 8000)


def request() -> LLMRequest:
    return LLMRequest(request_id="r", model="m", api=ApiKind.COMPLETIONS, prompt="hi", body={}, headers={})


def test_the_score_follows_the_order_of_the_values() -> None:
    scorer = LabelPreferenceScorer("s", LabelPreferenceScorer.Params(label="gpu", values=("h100", "a100")))
    assert scorer.score(CycleState(), request(), [H100, A100, OTHER]) == {H100.id: 1.0, A100.id: 0.5, OTHER.id: 0.0}


def test_the_configured_plugin_sends_requests_to_the_preferred_endpoint() -> None:
    config = load_config(DOCUMENT, MY_REGISTRY)
    [(scorer, weight), _] = config.profiles["default"].scorers
    assert (type(scorer), weight) == (LabelPreferenceScorer, 2.0)
    result = config.scheduler.schedule(request(), [OTHER, A100, H100], CycleState())
    assert result.endpoints[0] == H100
