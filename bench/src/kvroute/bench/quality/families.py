"""Workload families: parameter ranges that `sample(family, seed, n)` draws into concrete, load-calibrated
workloads, so a configuration can be tuned on some seeds (0-99) and judged on others (1000+).

```yaml
name: shared-prefix                      # bench/families/<name>.yaml
description: one line
utilisation: [0.5, 0.85]                 # target load of the fleet, see below
fleet:
  engines: [4, 16]
  profiles: [llama-3.1-8b-h100, llama-3.1-70b-4xh100]
  kv_coverage: [1.2, 3.0]                # fleet KV / the workload's cacheable tokens
  slow: {probability: 0.3, engines: [1, 2], factor: [1.5, 3.0]}     # optional
  prefill_fraction: [0.25, 0.5]          # optional: P/D, round(fraction x engines) prefill engines, 2 at least
  overrides: {max_loras: [1, 3]}         # optional profile fields
arrival:                                 # workload phases; rates are multiples of the calibrated rate
  - {process: poisson, rate: 1.0, count: [800, 1600]}
generator: {kind: shared-prefix, groups: [8, 64], ...}   # a workload generator with ranges
```

In `arrival`, `generator` and `overrides`, `[low, high]` draws uniformly (an integer when both bounds are
integers, else a float rounded to 3 places) and `{choice: [a, b, ...]}` picks one; a sinusoid phase takes
`cycles` (over the phase's mean duration) instead of `period_s`. Workload k of seed s is named
`<family>-s<s>-<k>` and drawn from `random.Random("<family>:<s>:<k>")`.

Load calibration. Per arrival (a request, or a whole session), the estimated engine time is

    prefill = (unique + min(shared, E x pool / N)) x prefill_per_token_s
    decode  = output x (step_overhead_s / BATCH + decode_per_seq_s + context x decode_per_context_token_s)

with `unique` the prompt tokens no cache can save (questions; a session's new turns), `shared` the tokens it
reads from a pool of shareable prefixes (system prompts, a RAG request's instruction and first document), `pool`
the distinct shared tokens the N arrivals touch (sum over prefixes of 1 - (1 - p)^N, p its popularity), each
computed once per engine E, `output` its output tokens (the mean of the clipped lognormal), `context` the mean
context while decoding and BATCH = 64 sequences sharing a step (a loaded engine). The fleet's capacity is its
engines, a slow engine counting 1 / slow_factor; the calibrated rate is `utilisation x capacity / (prefill +
decode)` arrivals per second, and on a P/D fleet `utilisation / max(prefill / prefill capacity, decode /
decode capacity)`. A router that keeps each prefix on few engines then runs at about the target load; one that
spreads prefixes recomputes them on every engine until the caches give out, beyond saturation.

KV pressure: each engine holds `kv_coverage x cacheable / E` tokens plus room for the tokens its running
requests add to the cached prefixes (`headroom`), at most the profile's own cache; `cacheable` is the pool plus,
for sessions, the contexts of the sessions alive at once (rate x session length x mean context). The fleet can
hold the working set, one engine cannot.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from kvroute.bench.quality.generators import NOMINAL_TOKEN_TIME_S
from kvroute.bench.quality.workloads import (
    AgenticSpec,
    GeneratorSpec,
    MultiTurnSpec,
    OutputLength,
    RagSpec,
    SharedPrefixSpec,
    WorkloadError,
    WorkloadSpec,
)
from kvroute.router.config.errors import validation_messages
from kvroute.simulator.engine.profiles import PROFILES, Profile

FAMILIES_DIR = Path(__file__).resolve().parents[4] / "families"
BATCH = 64
_RATES = ("rate", "start_rate", "end_rate", "mean_rate")
_GENERATOR: TypeAdapter[GeneratorSpec] = TypeAdapter(GeneratorSpec)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlowRange(_Model):
    probability: float = Field(ge=0, le=1)
    engines: tuple[int, int]
    factor: tuple[float, float]


class FleetRange(_Model):
    engines: tuple[int, int]
    profiles: list[str] = Field(min_length=1)
    kv_coverage: tuple[float, float]
    slow: SlowRange | None = None
    prefill_fraction: tuple[float, float] | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> FleetRange:
        unknown = sorted(set(self.profiles) - set(PROFILES))
        if unknown:
            raise ValueError(f"unknown profile(s) {', '.join(unknown)}; known: {', '.join(sorted(PROFILES))}")
        return self


class FamilySpec(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    utilisation: tuple[float, float]
    fleet: FleetRange
    arrival: list[dict[str, Any]] = Field(min_length=1)
    generator: dict[str, Any]


def draw(template: Any, rng: random.Random) -> Any:
    """A template with its ranges and choices drawn (see the module docstring)."""
    if isinstance(template, dict):
        if set(template) == {"choice"}:
            return rng.choice(template["choice"])
        return {key: draw(value, rng) for key, value in template.items()}
    if isinstance(template, list):
        if len(template) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in template):
            low, high = template
            if isinstance(low, int) and isinstance(high, int):
                return rng.randint(low, high)
            return round(rng.uniform(low, high), 3)
        return [draw(item, rng) for item in template]
    return template


@dataclass(frozen=True)
class Mix:
    """Per arrival: requests, prompt tokens (unique, shared), distinct shared tokens of the workload (pool),
    output tokens, mean decode context, the longest request, and a session's length in seconds (0: one request)."""

    requests: float
    unique: float
    shared: float
    pool: float
    output: float
    context: float
    longest: float
    session_s: float = 0.0


def mean_output(spec: OutputLength) -> float:
    """Mean of the clipped lognormal, by the midpoint rule over 64 equal-probability slices of Z."""
    normal = NormalDist()
    zs = [normal.inv_cdf((i + 0.5) / 64) for i in range(64)]
    return sum(min(spec.max, max(spec.min, spec.median * math.exp(spec.sigma * z))) for z in zs) / 64


def _distinct(popularity: list[float], draws: float) -> float:
    """Expected number of distinct items among `draws` draws: sum of 1 - (1 - p)^draws."""
    total = sum(popularity)
    return float(sum(1 - (1 - p / total) ** draws for p in popularity))


def _zipf(n: int, exponent: float | None) -> list[float]:
    return [1.0 / (k + 1) ** (exponent or 0.0) for k in range(n)]


def mix(generator: GeneratorSpec, arrivals: int) -> Mix:
    if isinstance(generator, SharedPrefixSpec) and generator.output is not None:
        out, system = mean_output(generator.output), generator.system_tokens
        prompt = system + generator.question_tokens
        pool = _distinct(_zipf(generator.groups, generator.group_zipf), arrivals) * system
        return Mix(1, generator.question_tokens, system, pool, out, prompt + out / 2, prompt + generator.output.max)
    if isinstance(generator, MultiTurnSpec) and generator.output is not None:
        out, turns, system = mean_output(generator.output), generator.turns, generator.system_tokens
        step = generator.user_tokens + out
        pool = _distinct([1.0] * generator.system_prompts, arrivals) * system
        longest = system + turns * step + generator.output.max
        session_s = (turns - 1) * (generator.think_time_s + out * NOMINAL_TOKEN_TIME_S)
        unique = turns * generator.user_tokens + (turns - 1) * out
        return Mix(turns, unique, system, pool, turns * out, system + turns * step / 2, longest, session_s)
    if isinstance(generator, AgenticSpec):
        out, system = mean_output(generator.output), generator.system_tokens
        mean_turns = (generator.turns_min + generator.turns_max) / 2
        step = out + (generator.tool_tokens_min + generator.tool_tokens_max) / 2
        pool = _distinct([1.0] * generator.system_prompts, arrivals) * system
        start = system + generator.task_tokens
        longest = start + generator.turns_max * (generator.output.max + generator.tool_tokens_max)
        pause = (generator.pause_min_s + generator.pause_max_s) / 2
        session_s = (mean_turns - 1) * (pause + out * NOMINAL_TOKEN_TIME_S)
        unique = generator.task_tokens + (mean_turns - 1) * step
        context = start + mean_turns * step / 2
        return Mix(mean_turns, unique, system, pool, mean_turns * out, context, longest, session_s)
    if isinstance(generator, RagSpec):
        out, doc = mean_output(generator.output), generator.document_tokens
        docs = (generator.docs_min + generator.docs_max) / 2
        first = _distinct(_zipf(generator.documents, generator.zipf), arrivals)
        pool = generator.tenants * generator.instruction_tokens + first * doc
        shared = generator.instruction_tokens + doc
        mean_prompt = shared + (docs - 1) * doc + generator.question_tokens
        longest = shared + (generator.docs_max - 1) * doc + generator.question_tokens + generator.output.max
        unique = (docs - 1) * doc + generator.question_tokens
        return Mix(1, unique, shared, pool, out, mean_prompt + out / 2, longest)
    raise ValueError("a family's generator is shared-prefix, multi-turn, agentic or rag, with an `output`")


def calibrated_rate(
    m: Mix, arrivals: int, profile: Profile, factors: list[float], prefill: int, utilisation: float
) -> float:
    """Arrivals per second that load the fleet (one step-time factor per engine; the first `prefill` engines
    prefill on a P/D fleet) to `utilisation`."""
    caching = prefill or len(factors)
    prefill_s = (m.unique + min(m.shared, caching * m.pool / arrivals)) * profile.prefill_per_token_s
    per_token = profile.step_overhead_s / BATCH + profile.decode_per_seq_s
    decode_s = m.output * (per_token + m.context * profile.decode_per_context_token_s)
    capacity = [1 / f for f in factors]
    if prefill:
        return utilisation / max(prefill_s / sum(capacity[:prefill]), decode_s / sum(capacity[prefill:]))
    return utilisation * sum(capacity) / (prefill_s + decode_s)


def headroom(m: Mix, rate: float, profile: Profile) -> float:
    """KV tokens an engine needs for its running requests beyond the cached prefixes: twice Little's law (requests
    per second x seconds each x the tokens a request adds, its unique prompt and output, a request decoding at
    half the speed of a BATCH-sized step), plus two of the longest requests."""
    step = profile.step_overhead_s + BATCH * (profile.decode_per_seq_s + m.context * profile.decode_per_context_token_s)
    seconds = 2 * step * m.output / m.requests
    return 2 * rate * seconds * (m.unique + m.output) + 2 * m.longest


def _fleet(family: FamilySpec, rng: random.Random) -> dict[str, Any]:
    ranges = family.fleet
    engines = rng.randint(*ranges.engines)
    fleet: dict[str, Any] = {"engines": engines, "profile": rng.choice(ranges.profiles)}
    if ranges.prefill_fraction is not None:
        fraction = rng.uniform(*ranges.prefill_fraction)
        # Two prefill engines at least (where the fleet allows): with one, routing has no prefill choice.
        fleet["prefill_engines"] = max(1, min(engines - 1, max(2, round(fraction * engines))))
    if ranges.slow is not None and rng.random() < ranges.slow.probability:
        fleet["slow_engines"] = min(engines - 1, rng.randint(*ranges.slow.engines))
        fleet["slow_factor"] = round(rng.uniform(*ranges.slow.factor), 3)
    fleet["overrides"] = draw(ranges.overrides, rng)
    return fleet


def _arrival(phases: list[dict[str, Any]], rate: float) -> list[dict[str, Any]]:
    scaled = []
    for template in phases:
        phase = {k: round(v * rate, 6) if k in _RATES else v for k, v in template.items()}
        if "cycles" in phase:
            cycles = phase.pop("cycles")
            phase["period_s"] = round(phase["count"] / phase["mean_rate"] / cycles, 3)
        scaled.append(phase)
    return scaled


def sample_one(family: FamilySpec, seed: int, k: int) -> WorkloadSpec:
    rng = random.Random(f"{family.name}:{seed}:{k}")
    utilisation = round(rng.uniform(*family.utilisation), 3)
    fleet = _fleet(family, rng)
    coverage = rng.uniform(*family.fleet.kv_coverage)
    generator = _GENERATOR.validate_python(draw(family.generator, rng))
    phases = draw(family.arrival, rng)
    arrivals = sum(phase["count"] for phase in phases)
    profile = PROFILES[fleet["profile"]].with_overrides(**fleet["overrides"])
    slow = fleet.get("slow_engines", 0)
    factors = [1.0] * (fleet["engines"] - slow) + [fleet.get("slow_factor", 1.0)] * slow
    m = mix(generator, arrivals)
    rate = calibrated_rate(m, arrivals, profile, factors, fleet.get("prefill_engines", 0), utilisation)
    cacheable = m.pool + rate * m.session_s * m.context
    tokens = coverage * cacheable / fleet["engines"] + headroom(m, rate / fleet["engines"], profile)
    blocks = min(profile.num_gpu_blocks, math.ceil(tokens / profile.block_size))
    fleet["overrides"] = {**fleet["overrides"], "num_gpu_blocks": blocks}
    description = (
        f"{family.name} sample: utilisation {utilisation:.2f} at {rate:.2f} arrivals/s, KV coverage "
        f"{coverage:.1f}x of {cacheable:,.0f} cacheable tokens; {family.description}"
    )
    return WorkloadSpec.model_validate(
        {
            "name": f"{family.name}-s{seed}-{k}",
            "description": description,
            "seed": seed,
            "fleet": fleet,
            "arrival": _arrival(phases, rate),
            "generator": generator.model_dump(exclude_none=True),
            "family": family.name,
        }
    )


def sample(family: FamilySpec, seed: int, n: int) -> list[WorkloadSpec]:
    """`n` workloads of `family` at sample seed `seed`: the same arguments always give the same specs."""
    return [sample_one(family, seed, k) for k in range(n)]


def load_family(path: Path) -> FamilySpec:
    """A family file, validated, and its templates checked by drawing one sample."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise WorkloadError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise WorkloadError(f"{path}: invalid YAML: {exc}") from None
    try:
        family = FamilySpec.model_validate(data)
        sample_one(family, 0, 0)
    except ValidationError as exc:
        raise WorkloadError("\n".join(f"{path}: {m}" for m in validation_messages(exc))) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise WorkloadError(f"{path}: {exc}") from None
    return family


def resolve_families(selection: str, directory: Path = FAMILIES_DIR) -> list[FamilySpec]:
    """`all` (every `*.yaml` of `directory`, by name) or comma-separated family names and paths."""
    items = [item.strip() for item in selection.split(",") if item.strip()]
    known = {f.name: f for f in map(load_family, sorted(directory.glob("*.yaml")))}
    if items == ["all"]:
        if not known:
            raise WorkloadError(f"no family files (*.yaml) in {directory}")
        return [known[name] for name in sorted(known)]
    chosen = []
    for item in items:
        if item.endswith((".yaml", ".yml")) or "/" in item:
            chosen.append(load_family(Path(item)))
        elif item in known:
            chosen.append(known[item])
        else:
            raise WorkloadError(f"unknown family {item!r}; known: {', '.join(sorted(known)) or 'none'}")
    if not chosen:
        raise WorkloadError("no family selected")
    return chosen
