"""Dynamo's real KV router (ai-dynamo 1.6.1) in front of simulators, through the worker adapters.

Every process listens on loopback; each test stops what it started (the simulators by the `sim_fleet` fixture,
Dynamo's processes in `finally`). Without the Dynamo venv (`make dynamo`) the integration tests skip, and fail
in CI, where every component must be present.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kvroute.bench.demo import MODEL
from kvroute.bench.live.dynamo import DynamoUnavailable, dynamo_processes, dynamo_python, wait_dynamo_ready
from kvroute.bench.live.dynamo.model import BOS, EOS, build_tokenizer, output_words
from kvroute.bench.processes import ProcessGroup

BLOCK = 16
PREFIX_TOKENS = 1000  # 62 full blocks
SIM_VOCAB = 128_000
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    served_by: list[int]  # indices of the simulators whose finished-request counter moved

    @property
    def worker_id(self) -> int:
        return int(self.body["nvext"]["worker_id"]["decode_worker_id"])

    @property
    def kv_hit_rate(self) -> float:
        return float(self.body["nvext"]["timing"]["kv_hit_rate"])

    @property
    def cached_tokens(self) -> int:
        return int(self.body["usage"]["prompt_tokens_details"]["cached_tokens"])


@pytest.fixture
def require_dynamo() -> Path:
    try:
        return dynamo_python()
    except DynamoUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"required component Dynamo is missing: {exc}")
        pytest.skip(str(exc))


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def _free_site(count: int) -> tuple[str, int]:
    """A loopback address of its own and a base port with `count - 1` free successors, below the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        host, port = f"127.0.{rng.randrange(100, 200)}.{rng.randrange(2, 250)}", rng.randrange(20000, 32000)
        if all(_bindable(host, p) for p in range(port, port + count)):
            return host, port
    raise RuntimeError("no free loopback site")


@contextlib.asynccontextmanager
async def dynamo_site(mode: str, sim_fleet: Any, sims: int) -> AsyncIterator[tuple[str, list[str]]]:
    """`sims` simulators publishing KV events, their adapters and Dynamo's frontend; yields the frontend's URL and
    the simulators' URLs."""
    workers, events = [], []
    for _ in range(sims):
        host, port = _free_site(2)
        sim_fleet.start("--kv-events-endpoint", f"tcp://{host}:{port + 1}", host=host, port=port)
        workers.append(f"{host}:{port}")
        events.append(f"tcp://{host}:{port + 1}")
    host, port = _free_site(2 + sims)
    with tempfile.TemporaryDirectory(prefix="kvroute-dynamo-") as workdir:
        processes = dynamo_processes(mode, host, port, workers, events, Path(workdir))
        group = ProcessGroup(processes)
        await group.start(timeout=30)
        try:
            base_url = f"http://{host}:{port}"
            await wait_dynamo_ready(base_url, sims, timeout=30, processes=processes)
            assert _listening_addresses(p.popen.pid for p in processes if p.popen is not None) <= {host}
            yield base_url, [f"http://{worker}" for worker in workers]
        finally:
            group.stop()


def _listening_addresses(pids: Iterable[int]) -> set[str]:
    """The IPv4 addresses the processes `pids` listen on (from /proc); '0.0.0.0' would be every interface."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, PermissionError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                hex_ip = local.split(":")[0]
                if len(hex_ip) == 8:
                    addresses.add(socket.inet_ntoa(bytes.fromhex(hex_ip)[::-1]))
                else:
                    addresses.add(f"ipv6:{hex_ip}")
    return addresses


async def _finished(session: aiohttp.ClientSession, sim: str) -> float:
    async with session.get(f"{sim}/metrics") as response:
        text = await response.text()
    return sum(float(value) for name, value in _SAMPLE.findall(text) if name == "vllm:request_success_total")


async def complete(
    session: aiohttp.ClientSession, url: str, prompt: Sequence[int], sims: Sequence[str], *, dynamo: bool = True
) -> Answer:
    """One token-id completion at `url` (Dynamo's frontend, or a simulator with `dynamo=False`); notes which
    simulators finished a request meanwhile."""
    before = [await _finished(session, sim) for sim in sims]
    body: dict[str, Any] = {"model": MODEL, "prompt": list(prompt), "max_tokens": 2}
    if dynamo:
        body["nvext"] = {"extra_fields": ["worker_id", "timing"]}
    async with session.post(f"{url}/v1/completions", json=body) as response:
        status, text = response.status, await response.text()
    after = [await _finished(session, sim) for sim in sims]
    answer = json.loads(text) if text.startswith("{") else {"raw": text}
    return Answer(status, answer, [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if a > b])


def tokens(rng: random.Random, count: int) -> list[int]:
    return [rng.randrange(SIM_VOCAB) for _ in range(count)]


@pytest.mark.integration
async def test_kv_mode_keeps_a_shared_prefix_group_on_the_worker_its_kv_events_name(
    require_dynamo: Path, sim_fleet: Any
) -> None:
    rng = random.Random(7)
    async with dynamo_site("kv", sim_fleet, 3) as (url, sims), aiohttp.ClientSession() as session:
        prefix = tokens(rng, PREFIX_TOKENS)
        warm = await complete(session, url, prefix + tokens(rng, 40), sims)
        assert warm.status == 200, warm.body
        assert (warm.kv_hit_rate, warm.cached_tokens) == (0.0, 0)
        # Two output tokens, detokenized by Dynamo back into two of the simulator's output words.
        assert warm.body["usage"]["completion_tokens"] == 2
        assert warm.body["choices"][0]["text"] in {a + b for a in output_words() for b in output_words()}

        group = [await complete(session, url, prefix + tokens(rng, 40), sims) for _ in range(6)]

        assert {answer.worker_id for answer in group} == {warm.worker_id}
        assert [answer.served_by for answer in group] == [warm.served_by] * 6
        # 62 of the 65 blocks of each prompt are the warm request's, reused by the engine: the token ids the
        # frontend forwarded are exactly the ones the engine hashed.
        assert [answer.cached_tokens for answer in group] == [62 * BLOCK] * 6
        assert all(answer.kv_hit_rate == pytest.approx(62 / 65) for answer in group)

        # A prefix cached behind Dynamo's back, by a request sent to a simulator directly, reaches the router only
        # through that simulator's KV events; the router must send the next request with that prefix there.
        for target in (index for index in range(len(sims)) if [index] != warm.served_by):
            primed = tokens(rng, PREFIX_TOKENS)
            direct = await complete(session, sims[target], primed, sims, dynamo=False)
            assert direct.served_by == [target]
            routed = await complete(session, url, primed + tokens(rng, 40), sims)
            assert routed.served_by == [target]
            assert routed.kv_hit_rate == pytest.approx(62 / 65)
            assert routed.cached_tokens == 62 * BLOCK


@pytest.mark.integration
async def test_approximate_mode_routes_on_its_own_decisions_and_ignores_kv_events(
    require_dynamo: Path, sim_fleet: Any
) -> None:
    rng = random.Random(11)
    async with dynamo_site("approx", sim_fleet, 2) as (url, sims), aiohttp.ClientSession() as session:
        prefix = tokens(rng, PREFIX_TOKENS)
        warm = await complete(session, url, prefix + tokens(rng, 40), sims)
        group = [await complete(session, url, prefix + tokens(rng, 40), sims) for _ in range(3)]
        assert {answer.worker_id for answer in group} == {warm.worker_id}
        assert all(answer.kv_hit_rate == pytest.approx(62 / 65) for answer in group)

        primed = tokens(rng, PREFIX_TOKENS)
        await complete(session, sims[0], primed, sims, dynamo=False)
        routed = await complete(session, url, primed + tokens(rng, 40), sims)
        assert routed.status == 200
        assert routed.kv_hit_rate == 0.0


@pytest.mark.integration
async def test_a_simulator_error_ends_the_request_with_an_error(require_dynamo: Path, sim_fleet: Any) -> None:
    # Dynamo's vocabulary ends with two specials beyond the simulator's; the simulator answers 400 to them.
    out_of_range = [SIM_VOCAB, 5, 6]
    async with dynamo_site("kv", sim_fleet, 1) as (url, sims), aiohttp.ClientSession() as session:
        answer = await complete(session, url, out_of_range, sims)
        assert answer.status == 400
        body = {"model": MODEL, "prompt": out_of_range, "max_tokens": 2, "stream": True}
        timeout = aiohttp.ClientTimeout(total=10)
        async with session.post(f"{url}/v1/completions", json=body, timeout=timeout) as response:
            events = [line async for line in response.content if line.startswith(b"data:")]
        assert b'"error"' in events[0]
        assert events[-1].strip() == b"data: [DONE]"


def test_the_model_vocabulary_is_the_simulators_plus_two_specials_and_each_output_word_is_one_token() -> None:
    tokenizer = build_tokenizer()
    assert tokenizer.get_vocab_size() == SIM_VOCAB + 2
    assert (tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)) == (SIM_VOCAB, SIM_VOCAB + 1)
    assert tokenizer.decode([SIM_VOCAB - 1]) == f"<t{SIM_VOCAB - 1}>"
    for word in output_words():
        (single,) = tokenizer.encode(word, add_special_tokens=False).ids
        assert tokenizer.decode([single]) == word


def test_dynamo_python_names_the_install_command_when_the_venv_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVROUTE_CACHE", str(tmp_path))
    with pytest.raises(DynamoUnavailable, match=r"make dynamo.*scripts/dynamo-venv\.sh") as caught:
        dynamo_python()
    assert str(tmp_path / "dynamo" / "1.6.1" / "venv") in str(caught.value)
