from __future__ import annotations

import pytest

from kvroute.cli import build_parser


def parse(*argv: str) -> object:
    args = ["bench", "live", *argv]
    return build_parser(args).parse_args(args)


def error_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_defaults_run_every_router_on_a_bounded_trace() -> None:
    args = parse()
    assert args.routers == ("kvroute", "sglang-router", "vllm-router")
    assert (args.sims, args.duration, args.rate, args.max_requests) == (4, 30.0, 10.0, 300)
    assert (args.router_host, args.router_port, args.sim_port) == ("127.0.0.1", 18180, 18100)
    assert args.json == "kvroute-bench-live.json"


def test_routers_are_chosen_in_the_order_given_without_duplicates() -> None:
    assert parse("--routers", "vllm-router, kvroute,vllm-router").routers == ("vllm-router", "kvroute")


def test_unknown_router_is_rejected_naming_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    expected = "choose among kvroute, dynamo-kv, dynamo-approx, sglang-router, vllm-router (got 'nginx')"
    assert expected in error_of(capsys, "--routers", "nginx")


def test_router_address_must_be_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    assert "10.0.0.1 is not a loopback address" in error_of(capsys, "--router-host", "10.0.0.1")


@pytest.mark.parametrize("flag", ["--rate", "--duration", "--max-requests", "--sims", "--probe"])
def test_counts_and_durations_must_be_positive(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert "'0' must be positive" in error_of(capsys, flag, "0")
