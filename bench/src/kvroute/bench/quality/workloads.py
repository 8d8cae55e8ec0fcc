"""Workload files: one YAML document per workload, validated, and found by name or path.

```yaml
name: shared-prefix-high          # [a-z0-9-]+, unique in a directory
description: one line for the report
seed: 1                           # mixed with the run's --seed
fleet:
  engines: 4
  profile: llama-3.1-8b-h100      # a simulator profile (kvroute.simulator.engine.profiles)
  overrides: {num_gpu_blocks: 4000}   # any Profile field, e.g. a smaller KV cache to create pressure
  prefill_engines: 0              # > 0: P/D; the first N engines prefill, the rest decode
  slow_engines: 0                 # the last N engines are slower: their step-time coefficients x slow_factor
  slow_factor: 1.0
arrival:                          # phases, one after the other; each starts `after_s` after the previous ends
  - {process: poisson, rate: 20, count: 1000}
  - {process: ramp, start_rate: 5, end_rate: 60, count: 2000}   # rate grows linearly
  - {process: burst, count: 1000, spread_s: 0}                  # all at once (or spread uniformly)
  - {process: sinusoid, mean_rate: 20, amplitude: 0.6, period_s: 60, count: 1200}   # rate rises and falls
generator:                        # what each arrival asks; see `generators`
  kind: shared-prefix | multi-turn | varied | agentic | rag | trace
  ...
family: null                      # set on workloads drawn from a family (`families`), for per-family reports
```

Output lengths are a fixed `output_tokens` (`answer_tokens` for multi-turn) or an `output` distribution
(`OutputLength`: lognormal, clipped). A `trace` generator replays a JSONL trace (`traces`) with its own
arrival times: its workload has no `arrival`.

Every problem is reported with its path, e.g. `shared.yaml: fleet.engines: Input should be greater than or equal
to 1`. `resolve("all" | "name,name" | "path.yaml", directory)` returns the specs in a stable order: "all" is every
`*.yaml` of the directory sorted by workload name; names and paths keep the order given.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kvroute.router.config.errors import validation_messages
from kvroute.simulator.engine.profiles import DEFAULT_PROFILE, PROFILES, Profile

# `bench/workloads/` of the source tree (kvroute is installed from it in development mode); `--workloads-dir`
# points elsewhere.
WORKLOADS_DIR = Path(__file__).resolve().parents[4] / "workloads"


class WorkloadError(ValueError):
    """A workload file is missing, unreadable or invalid; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_PROFILE_FIELDS = {f.name for f in fields(Profile)} - {"name"}


class FleetSpec(_Model):
    engines: int = Field(ge=1, le=256)
    profile: str = DEFAULT_PROFILE
    overrides: dict[str, int | float] = Field(default_factory=dict)
    prefill_engines: int = Field(default=0, ge=0)
    slow_engines: int = Field(default=0, ge=0)
    slow_factor: float = Field(default=1.0, ge=1.0, description="step-time multiplier of the slow engines")

    @model_validator(mode="after")
    def _check(self) -> FleetSpec:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; known: {', '.join(sorted(PROFILES))}")
        unknown = sorted(set(self.overrides) - _PROFILE_FIELDS)
        if unknown:
            raise ValueError(f"unknown profile field(s) in overrides: {', '.join(unknown)}")
        if self.prefill_engines and self.prefill_engines >= self.engines:
            raise ValueError("prefill_engines must leave at least one decode engine")
        if self.slow_engines > self.engines:
            raise ValueError("slow_engines cannot exceed engines")
        return self


class PoissonPhase(_Model):
    process: Literal["poisson"]
    rate: float = Field(gt=0, description="requests per second")
    count: int = Field(ge=1)
    after_s: float = Field(default=0.0, ge=0)


class RampPhase(_Model):
    process: Literal["ramp"]
    start_rate: float = Field(gt=0)
    end_rate: float = Field(gt=0)
    count: int = Field(ge=1)
    after_s: float = Field(default=0.0, ge=0)


class BurstPhase(_Model):
    process: Literal["burst"]
    count: int = Field(ge=1)
    spread_s: float = Field(default=0.0, ge=0, description="0: every request at the same instant")
    after_s: float = Field(default=0.0, ge=0)


class SinusoidPhase(_Model):
    """Rate `mean_rate * (1 - amplitude * cos(2 pi t / period_s))`, t from the phase's start: a day in small."""

    process: Literal["sinusoid"]
    mean_rate: float = Field(gt=0)
    amplitude: float = Field(ge=0, lt=1, description="0: Poisson at mean_rate; the rate swings by this fraction")
    period_s: float = Field(gt=0)
    count: int = Field(ge=1)
    after_s: float = Field(default=0.0, ge=0)


ArrivalPhase = Annotated[PoissonPhase | RampPhase | BurstPhase | SinusoidPhase, Field(discriminator="process")]


class OutputLength(_Model):
    """Lognormal output lengths: `round(median * exp(sigma * Z))`, Z standard normal, clipped to [min, max]."""

    median: int = Field(ge=1)
    sigma: float = Field(ge=0)
    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _check(self) -> OutputLength:
        if not self.min <= self.median <= self.max:
            raise ValueError("need min <= median <= max")
        return self


def _one_output(fixed_name: str, fixed: int | None, output: OutputLength | None) -> None:
    if (fixed is None) == (output is None):
        raise ValueError(f"give exactly one of {fixed_name} and output")


class LoraSpec(_Model):
    adapters: int = Field(ge=1)
    zipf: float = Field(default=1.0, ge=0, description="popularity of adapter k is 1 / (k + 1) ** zipf")


class SharedPrefixSpec(_Model):
    kind: Literal["shared-prefix"]
    groups: int = Field(ge=1)
    system_tokens: int = Field(ge=0)
    question_tokens: int = Field(ge=1)
    output_tokens: int | None = Field(default=None, ge=1)
    output: OutputLength | None = None
    users_per_group: int | None = Field(default=None, ge=1, description="fixed questions per group (None: unique)")
    group_zipf: float | None = Field(default=None, ge=0, description="group k's popularity 1 / (k + 1) ** group_zipf")
    lora: LoraSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> SharedPrefixSpec:
        _one_output("output_tokens", self.output_tokens, self.output)
        return self


class MultiTurnSpec(_Model):
    kind: Literal["multi-turn"]
    system_prompts: int = Field(ge=1)
    system_tokens: int = Field(ge=0)
    turns: int = Field(ge=1)
    user_tokens: int = Field(ge=1)
    answer_tokens: int | None = Field(default=None, ge=1)
    output: OutputLength | None = None
    think_time_s: float = Field(gt=0, description="mean of the exponential pause between turns")

    @model_validator(mode="after")
    def _check(self) -> MultiTurnSpec:
        _one_output("answer_tokens", self.answer_tokens, self.output)
        return self


class VariedSpec(_Model):
    kind: Literal["varied"]
    groups: int = Field(ge=1)
    isl_mean: int = Field(ge=2)
    isl_spread: float = Field(ge=0, description="standard deviation of the prompt length")
    isl_min: int = Field(ge=2)
    isl_max: int = Field(ge=2)
    osl_min: int = Field(ge=1)
    osl_max: int = Field(ge=1)

    @model_validator(mode="after")
    def _check(self) -> VariedSpec:
        if not self.isl_min <= self.isl_mean <= self.isl_max:
            raise ValueError("need isl_min <= isl_mean <= isl_max")
        if self.isl_min <= self.isl_mean // 2:
            raise ValueError("isl_min must exceed the shared half-prefix (isl_mean / 2)")
        if self.osl_min > self.osl_max:
            raise ValueError("need osl_min <= osl_max")
        return self


class AgenticSpec(_Model):
    kind: Literal["agentic"]
    system_prompts: int = Field(ge=1)
    system_tokens: int = Field(ge=0)
    task_tokens: int = Field(ge=1)
    turns_min: int = Field(ge=1)
    turns_max: int = Field(ge=1)
    tool_tokens_min: int = Field(ge=1)
    tool_tokens_max: int = Field(ge=1)
    pause_min_s: float = Field(ge=0, description="tool time between an answer and the next turn, uniform")
    pause_max_s: float = Field(ge=0)
    output: OutputLength

    @model_validator(mode="after")
    def _check(self) -> AgenticSpec:
        for low, high in (("turns_min", "turns_max"), ("tool_tokens_min", "tool_tokens_max")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"need {low} <= {high}")
        if self.pause_min_s > self.pause_max_s:
            raise ValueError("need pause_min_s <= pause_max_s")
        return self


class RagSpec(_Model):
    kind: Literal["rag"]
    tenants: int = Field(ge=1)
    instruction_tokens: int = Field(ge=0)
    documents: int = Field(ge=1, description="corpus size; document k's popularity is 1 / (k + 1) ** zipf")
    document_tokens: int = Field(ge=1)
    zipf: float = Field(ge=0)
    docs_min: int = Field(ge=1)
    docs_max: int = Field(ge=1)
    question_tokens: int = Field(ge=1)
    output: OutputLength

    @model_validator(mode="after")
    def _check(self) -> RagSpec:
        if not self.docs_min <= self.docs_max <= self.documents:
            raise ValueError("need docs_min <= docs_max <= documents")
        return self


class TraceSpec(_Model):
    kind: Literal["trace"]
    path: str = Field(description="a JSONL file, relative to the working directory")
    format: Literal["auto", "mooncake", "plain"] = "auto"
    speed: float = Field(default=1.0, gt=0, description="time compression: timestamps / speed")
    window: tuple[float, float] | None = Field(default=None, description="[start, end) seconds of the trace")
    max_context: int | None = Field(default=None, ge=2, description="default: the profile's max_model_len")

    @model_validator(mode="after")
    def _check(self) -> TraceSpec:
        if self.window is not None and not 0 <= self.window[0] < self.window[1]:
            raise ValueError("window: need 0 <= start < end")
        return self


GeneratorSpec = Annotated[
    SharedPrefixSpec | MultiTurnSpec | VariedSpec | AgenticSpec | RagSpec | TraceSpec, Field(discriminator="kind")
]


class WorkloadSpec(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    seed: int = 0
    fleet: FleetSpec
    arrival: list[ArrivalPhase] = Field(default_factory=list)
    generator: GeneratorSpec
    family: str | None = None

    @model_validator(mode="after")
    def _check(self) -> WorkloadSpec:
        if isinstance(self.generator, TraceSpec) and self.arrival:
            raise ValueError("arrival: a trace brings its own arrival times")
        if not isinstance(self.generator, TraceSpec) and not self.arrival:
            raise ValueError("arrival: at least one phase is needed")
        return self

    @property
    def arrivals(self) -> int:
        """Arrivals of the whole process (requests, or sessions for multi-turn)."""
        return sum(phase.count for phase in self.arrival)


@dataclass(frozen=True)
class Fleet:
    """The engines of a workload: one profile each, and a role (`both`, or `prefill` / `decode` for P/D).

    The last `slow_engines` engines have their step-time coefficients (overhead, prefill per token, decode per
    sequence and per context token) multiplied by `slow_factor`: an older GPU or a noisy neighbour."""

    profiles: tuple[Profile, ...]
    roles: tuple[str, ...]

    @classmethod
    def from_spec(cls, spec: FleetSpec) -> Fleet:
        profile = PROFILES[spec.profile].with_overrides(**spec.overrides)
        factor = spec.slow_factor
        slow = profile.with_overrides(
            step_overhead_s=profile.step_overhead_s * factor,
            prefill_per_token_s=profile.prefill_per_token_s * factor,
            decode_per_seq_s=profile.decode_per_seq_s * factor,
            decode_per_context_token_s=profile.decode_per_context_token_s * factor,
        )
        profiles = (profile,) * (spec.engines - spec.slow_engines) + (slow,) * spec.slow_engines
        if spec.prefill_engines:
            roles = ("prefill",) * spec.prefill_engines + ("decode",) * (spec.engines - spec.prefill_engines)
        else:
            roles = ("both",) * spec.engines
        return cls(profiles, roles)

    @property
    def disaggregated(self) -> bool:
        return "prefill" in self.roles

    def indices(self, role: str) -> list[int]:
        return [i for i, r in enumerate(self.roles) if r == role]

    @property
    def kv_tokens(self) -> int:
        return sum(p.num_gpu_blocks * p.block_size for p in self.profiles)


def parse_workload(text: str, source: str = "<workload>") -> WorkloadSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorkloadError(f"{source}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise WorkloadError(f"{source}: a workload is a mapping, not {type(data).__name__}")
    try:
        spec = WorkloadSpec.model_validate(data)
        Fleet.from_spec(spec.fleet)  # the overrides must make a valid profile
    except ValidationError as exc:
        raise WorkloadError("\n".join(f"{source}: {m}" for m in validation_messages(exc))) from None
    except TypeError as exc:
        raise WorkloadError(f"{source}: fleet.overrides: {exc}") from None
    return spec


def load_workload(path: Path) -> WorkloadSpec:
    try:
        text = path.read_text()
    except OSError as exc:
        raise WorkloadError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_workload(text, str(path))


def load_directory(directory: Path) -> dict[str, WorkloadSpec]:
    """Every workload of `directory` by name, sorted by name; two files with one name are an error."""
    specs: dict[str, tuple[Path, WorkloadSpec]] = {}
    for path in sorted(directory.glob("*.yaml")):
        spec = load_workload(path)
        if spec.name in specs:
            raise WorkloadError(f"{path}: workload name {spec.name!r} is also used by {specs[spec.name][0]}")
        specs[spec.name] = (path, spec)
    return {name: specs[name][1] for name in sorted(specs)}


def resolve(selection: str, directory: Path = WORKLOADS_DIR) -> list[WorkloadSpec]:
    """`all`, a comma-separated list of names (of `directory`'s workloads) and/or paths to YAML files."""
    items = [item.strip() for item in selection.split(",") if item.strip()]
    if not items:
        raise WorkloadError("no workload selected")
    if items == ["all"]:
        specs = list(load_directory(directory).values())
        if not specs:
            raise WorkloadError(f"no workload files (*.yaml) in {directory}")
        return specs
    known: dict[str, WorkloadSpec] | None = None
    chosen: list[WorkloadSpec] = []
    for item in items:
        if item.endswith((".yaml", ".yml")) or "/" in item:
            chosen.append(load_workload(Path(item)))
            continue
        if known is None:
            known = load_directory(directory)
        if item not in known:
            raise WorkloadError(f"unknown workload {item!r}; known: {', '.join(known) or 'none'}")
        chosen.append(known[item])
    names = [spec.name for spec in chosen]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise WorkloadError(f"workload(s) selected twice: {', '.join(duplicates)}")
    return chosen
