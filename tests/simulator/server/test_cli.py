"""`kvroute sim serve` flags: every flag documented, profile overrides applied, bad values refused."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from kvroute.simulator import cli
from kvroute.simulator.engine.profiles import PROFILES


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvroute")
    cli.register(parser.add_subparsers(dest="part"))
    return parser


def parse(*argv: str) -> argparse.Namespace:
    return serve_parser().parse_args(["sim", "serve", *argv])


def test_every_flag_has_help() -> None:
    args = parse()
    actions = args.parser._actions
    undocumented = [a.option_strings for a in actions if a.option_strings and not a.help]
    assert undocumented == []


def test_defaults_describe_the_8b_profile_on_loopback() -> None:
    config = cli.config_from_args(parse("--port", "8123"))
    assert config.profile == PROFILES["llama-3.1-8b-h100"]
    assert (config.host, config.port, config.time_scale, config.default_max_tokens) == ("127.0.0.1", 8123, 1.0, 16)
    assert config.pod == "sim-127.0.0.1-8123"
    assert config.kv_events_endpoint is None
    assert config.kv_events_topic == "kv@127.0.0.1:8123@meta-llama/Llama-3.1-8B-Instruct"


def test_profile_fields_are_overridden_by_flags() -> None:
    config = cli.config_from_args(
        parse(
            "--profile", "tiny", "--max-loras", "2", "--max-num-seqs", "3", "--max-num-batched-tokens", "64",
            "--num-gpu-blocks", "99", "--block-size", "32", "--max-model-len", "2048",
            "--served-model-name", "a", "b", "--lora-modules", "x=/p", "y",
        )
    )  # fmt: skip
    profile = config.profile
    assert (profile.name, profile.max_loras, profile.max_num_seqs, profile.max_num_batched_tokens) == ("tiny", 2, 3, 64)
    assert (profile.num_gpu_blocks, profile.block_size, profile.max_model_len) == (99, 32, 2048)
    assert profile.step_overhead_s == PROFILES["tiny"].step_overhead_s
    assert (config.served_model_name, config.model_names, config.lora_modules) == ("a", ("a", "b"), ("x=/p", "y"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--time-scale", "0"], "--time-scale"),
        (["--failure-injection-rate", "150"], "percentage"),
        (["--global-cache-hit-threshold", "2"], "between 0 and 1"),
        (["--num-gpu-blocks", "0"], "--num-gpu-blocks"),
        (["--default-max-tokens", "0"], "--default-max-tokens"),
    ],
)
def test_out_of_range_values_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cli.config_from_args(parse(*argv))


def test_the_command_exits_with_a_usage_error_for_a_bad_value() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvroute.cli", "sim", "serve", "--time-scale", "-1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--time-scale must be a positive number" in result.stderr
