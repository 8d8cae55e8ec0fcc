"""The simulator server through the official OpenAI client, against a real `kvroute sim serve` process."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

pytestmark = pytest.mark.integration

LORA = "sql-adapter"


@pytest.fixture(scope="module")
def sim(module_sim_fleet: Any) -> Any:
    return module_sim_fleet.start("--time-scale", "0.05", "--lora-modules", f"{LORA}=/adapters/sql", "--seed", "7")


@pytest.fixture
def client(sim: Any, require_component: Any) -> Any:
    openai = require_component("openai")
    with openai.OpenAI(base_url=f"{sim.base_url}/v1", api_key="x", max_retries=0, timeout=30) as client:
        yield client


def post(sim: Any, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(f"{sim.base_url}{path}", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def unique_text(tag: str, chars: int) -> str:
    """Text no other test sends (so caches start cold), exactly `chars` long."""
    seed = f"{tag}-{time.monotonic_ns()} "
    return (seed * (chars // len(seed) + 1))[:chars]


def test_completion_has_exactly_max_tokens_and_usage(client: Any, sim: Any) -> None:
    raw = client.completions.with_raw_response.create(
        model="meta-llama/Llama-3.1-8B-Instruct", prompt=unique_text("c", 400), max_tokens=7
    )
    completion = raw.parse()

    assert raw.headers["x-inference-pod"] == sim.pod_name
    assert raw.headers["x-inference-namespace"] == "default"
    assert completion.object == "text_completion"
    assert completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].text) == 7 * 4  # every output word is one 4-character token
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (100, 7, 107)
    assert usage.prompt_tokens_details.cached_tokens == 0


def test_default_max_tokens_is_sixteen(client: Any) -> None:
    completion = client.completions.create(model="meta-llama/Llama-3.1-8B-Instruct", prompt="short prompt")
    assert completion.usage.completion_tokens == 16


def test_repeated_prompt_reports_its_cached_full_blocks(client: Any) -> None:
    prompt = unique_text("cache", 400)  # 100 tokens: 6 full blocks of 16 may be reused (never the last token)
    first = client.completions.create(model="meta-llama/Llama-3.1-8B-Instruct", prompt=prompt, max_tokens=2)
    second = client.completions.create(model="meta-llama/Llama-3.1-8B-Instruct", prompt=prompt, max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == 96


def test_chat_completion_counts_the_rendered_template(client: Any, sim: Any) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": unique_text("chat", 200)},
    ]
    chat = client.chat.completions.create(
        model="meta-llama/Llama-3.1-8B-Instruct", messages=messages, max_completion_tokens=5
    )
    tokenized = post(sim, "/tokenize", {"messages": messages})

    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    assert len(chat.choices[0].message.content) == 5 * 4
    assert chat.usage.prompt_tokens == tokenized["count"] == len(tokenized["tokens"])
    assert tokenized["max_model_len"] == 131_072
    assert chat.usage.completion_tokens == 5


def test_streamed_completion_has_one_chunk_per_token_and_usage_last(client: Any) -> None:
    stream = client.completions.create(
        model="meta-llama/Llama-3.1-8B-Instruct",
        prompt=unique_text("stream", 80),
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) == 6 and all(len(t) == 4 for t in texts)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (20, 6)


def test_streamed_chat_opens_with_the_role_and_ends_with_usage(client: Any) -> None:
    stream = client.chat.completions.create(
        model="meta-llama/Llama-3.1-8B-Instruct",
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert len(contents) == 3
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 3


def test_stream_without_usage_sends_no_usage_chunk(client: Any) -> None:
    stream = client.completions.create(
        model="meta-llama/Llama-3.1-8B-Instruct", prompt="abc", max_tokens=2, stream=True
    )
    chunks = list(stream)
    assert len(chunks) == 2
    assert all(c.choices and c.usage is None for c in chunks)


def test_models_lists_the_base_model_and_the_lora_adapter(client: Any) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"meta-llama/Llama-3.1-8B-Instruct", LORA}
    lora = models[LORA].model_dump()
    assert lora["parent"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert lora["root"] == "/adapters/sql"


def test_lora_adapter_is_usable_and_keeps_its_own_cache(client: Any) -> None:
    prompt = unique_text("lora", 400)
    base = client.completions.create(model="meta-llama/Llama-3.1-8B-Instruct", prompt=prompt, max_tokens=2)
    lora_first = client.completions.create(model=LORA, prompt=prompt, max_tokens=2)
    lora_second = client.completions.create(model=LORA, prompt=prompt, max_tokens=2)

    assert base.usage.prompt_tokens_details.cached_tokens == 0
    assert lora_first.model == LORA
    assert lora_first.usage.prompt_tokens_details.cached_tokens == 0  # the base model's KV is not the adapter's
    assert lora_second.usage.prompt_tokens_details.cached_tokens == 96


def test_unknown_model_is_a_404_not_found(client: Any, require_component: Any) -> None:
    openai = require_component("openai")
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=1)
    assert caught.value.status_code == 404
    assert caught.value.body["message"] == "The model `no-such-model` does not exist."


def test_tokenize_a_prompt(sim: Any) -> None:
    body = post(sim, "/tokenize", {"prompt": "abcdefghij"})
    assert body["count"] == 3 == len(body["tokens"])
    assert body["max_model_len"] == 131_072


def test_render_answers_the_token_ids_generation_would_run_without_generating(sim: Any) -> None:
    model = "meta-llama/Llama-3.1-8B-Instruct"
    prompt = unique_text("render", 400)  # 6 full blocks that a generation would have left cached
    messages = [{"role": "user", "content": unique_text("render-chat", 60)}]

    completion = post(sim, "/v1/completions/render", {"model": model, "prompt": prompt, "max_tokens": 3})
    chat = post(sim, "/v1/chat/completions/render", {"model": model, "messages": messages})

    assert completion == [
        {
            "model": model,
            "token_ids": post(sim, "/tokenize", {"prompt": prompt})["tokens"],
            "sampling_params": {"max_tokens": 3},
        }
    ]
    assert chat["token_ids"] == post(sim, "/tokenize", {"messages": messages})["tokens"]
    assert chat["sampling_params"] == {"max_tokens": 16}  # the server's --default-max-tokens
    # Nothing ran: a rendered prompt is not in the KV cache afterwards.
    generated = post(sim, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 1})
    assert generated["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_render_rejects_what_generation_rejects(sim: Any) -> None:
    request = urllib.request.Request(
        f"{sim.base_url}/v1/completions/render", data=json.dumps({"model": "no-such-model", "prompt": "x"}).encode()
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 404
    assert json.load(caught.value)["error"]["message"] == "The model `no-such-model` does not exist."


def test_kv_events_are_published_with_the_server_topic(sim_fleet: Any, require_component: Any) -> None:
    zmq = require_component("zmq")
    msgpack = require_component("msgpack")
    host = "127.0.0.1"
    with zmq.Context() as context, context.socket(zmq.SUB) as sub:
        sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
        port = sub.bind_to_random_port(f"tcp://{host}")
        sim = sim_fleet.start(
            "--time-scale", "0.05", "--kv-events-endpoint", f"tcp://{host}:{port}", "--kv-events-connect"
        )
        # A bound SUB socket sends its subscription to a newly connected publisher only while it is being
        # polled; poll idly for a moment so the first event is not lost to the slow joiner.
        assert not sub.poll(300)
        post(sim, "/v1/completions", {"prompt": "x" * 4 * 40, "max_tokens": 1})
        assert sub.poll(5000), "no KV event arrived"
        frame_topic, seq, payload = sub.recv_multipart()

    _timestamp, events, _rank = msgpack.unpackb(payload)
    assert frame_topic.decode() == f"kv@{sim.host}:{sim.port}@meta-llama/Llama-3.1-8B-Instruct"
    assert int.from_bytes(seq, "big") == 0
    stored = events[0]
    assert stored[0] == "BlockStored"
    assert len(stored[1]) == 2  # 40 prompt tokens: two full blocks of 16
    assert stored[4] == 16


def test_instances_share_a_port_on_different_loopback_addresses(sim_fleet: Any) -> None:
    first = sim_fleet.start("--time-scale", "0.05")
    second = sim_fleet.start("--time-scale", "0.05", "--pod-name", "second", port=first.port)
    answers = {}
    for sim in (first, second):
        with urllib.request.urlopen(f"{sim.base_url}/health", timeout=5) as response:
            answers[sim.host] = response.headers["x-inference-pod"]
    assert first.host != second.host
    assert answers == {first.host: first.pod_name, second.host: "second"}
