"""The `hf` tokenizer on a tiny tokenizer.json built here with the `tokenizers` library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from kvroute.router.framework import ApiKind, LLMRequest
from kvroute.router.plugins.tokenizers import HFTokenizer, TokenizeError, make_tokenizer
from kvroute.router.plugins.tokenizers import hf as hf_module

VOCAB = {"[UNK]": 0, "<s>": 1, "hello": 2, "world": 3, "user": 4, ":": 5, "assistant": 6}
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def write_tokenizer(directory: Path, config: dict[str, Any] | None = None) -> Path:
    tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<s>"])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    path = directory / "tokenizer.json"
    tokenizer.save(str(path))
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def request(api: ApiKind, **body: Any) -> LLMRequest:
    return LLMRequest("r", "m", api, "", {"model": "m", **body}, {})


CHAT = [{"role": "user", "content": "hello world"}]


def test_completions_get_the_models_special_tokens(tmp_path: Path) -> None:
    tokenizer = make_tokenizer("hf", path=str(write_tokenizer(tmp_path)))

    assert tokenizer.tokenize_now(request(ApiKind.COMPLETIONS, prompt="hello world")) == [1, 2, 3]
    assert tokenizer.tokenize_now(request(ApiKind.COMPLETIONS, prompt=[5, 6])) == [5, 6]


def test_chat_is_rendered_with_the_chat_template_next_to_the_tokenizer(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, {"chat_template": TEMPLATE, "bos_token": {"content": "<s>"}, "eos_token": "</s>"})
    tokenizer = HFTokenizer(str(tmp_path))  # the directory holding tokenizer.json

    # "<s>user: hello world\nassistant:" encoded without adding special tokens: the template wrote BOS.
    assert tokenizer.tokenize_now(request(ApiKind.CHAT, messages=CHAT)) == [1, 4, 5, 2, 3, 6, 5]


def test_a_named_default_template_is_taken(tmp_path: Path) -> None:
    templates = [{"name": "tool_use", "template": "unused"}, {"name": "default", "template": TEMPLATE}]
    path = write_tokenizer(tmp_path, {"chat_template": templates, "bos_token": "<s>"})

    assert HFTokenizer(str(path)).render_chat(CHAT) == "<s>user: hello world\nassistant:"


def test_without_a_chat_template_the_plain_template_is_used(tmp_path: Path) -> None:
    path = write_tokenizer(tmp_path, {"bos_token": "<s>"})
    tokenizer = HFTokenizer(str(path))

    assert tokenizer.render_chat(CHAT) == "<|user|>\nhello world\n<|assistant|>\n"
    # "<|" and "|>" are not in the tiny vocabulary: [UNK].
    assert tokenizer.tokenize_now(request(ApiKind.CHAT, messages=CHAT)) == [0, 4, 0, 2, 3, 0, 6, 0]


async def test_tokenize_loads_the_files_off_the_event_loop(tmp_path: Path) -> None:
    tokenizer = HFTokenizer(str(write_tokenizer(tmp_path)))

    assert await tokenizer.tokenize(request(ApiKind.COMPLETIONS, prompt="world hello"), []) == [1, 3, 2]


def test_a_template_that_raises_fails_the_tokenization(tmp_path: Path) -> None:
    path = write_tokenizer(tmp_path, {"chat_template": "{{ raise_exception('no system role') }}"})

    with pytest.raises(TokenizeError, match="no system role"):
        HFTokenizer(str(path)).tokenize_now(request(ApiKind.CHAT, messages=CHAT))


def test_a_missing_file_fails_and_is_retried_only_after_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(hf_module.time, "monotonic", lambda: clock[0])
    tokenizer = HFTokenizer(str(tmp_path / "tokenizer.json"))
    completion = request(ApiKind.COMPLETIONS, prompt="hello")

    with pytest.raises(TokenizeError, match="cannot load the tokenizer"):
        tokenizer.tokenize_now(completion)
    write_tokenizer(tmp_path)
    clock[0] += hf_module.RETRY_S - 1
    with pytest.raises(TokenizeError, match="cannot load the tokenizer"):
        tokenizer.tokenize_now(completion)
    clock[0] += 1
    assert tokenizer.tokenize_now(completion) == [1, 2]
