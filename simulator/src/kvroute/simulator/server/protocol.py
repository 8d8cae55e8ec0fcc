"""Request bodies of the OpenAI-compatible API, validated into what the engine needs.

Every way a body can be wrong (not UTF-8, not JSON, not an object, a field of the wrong type or range, a prompt
that does not fit the context) raises `APIError` with status 400 and a message naming the field; an unknown
model raises 404. Fields the simulator has no use for (temperature, top_p, stop, ...) are accepted and ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvroute.simulator.server.errors import APIError, bad_request
from kvroute.simulator.tokenizer import VOCAB_SIZE, Tokenizer


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A completion or chat request, tokenized and checked."""

    chat: bool
    model: str
    lora_name: str | None
    prompt_token_ids: list[int]
    max_tokens: int
    stream: bool
    include_usage: bool
    cache_hit_threshold: float | None
    kv_transfer_params: dict[str, Any] | None
    seed: int | None


class ModelCatalog:
    """The names a server answers to: the base model's served names and its LoRA adapters."""

    def __init__(self, served_names: Sequence[str], lora_modules: Sequence[str], max_model_len: int) -> None:
        self.served_names = tuple(served_names)
        self.max_model_len = max_model_len
        # vLLM's `--lora-modules name=path`; a bare name is its own path.
        self.loras: dict[str, str] = {}
        for module in lora_modules:
            name, _, path = module.partition("=")
            self.loras[name] = path or name

    @property
    def default(self) -> str:
        return self.served_names[0]

    def resolve(self, model: Any) -> tuple[str, str | None]:
        """(model name to echo, LoRA adapter or None); a missing model means the base model, as in vLLM."""
        if model is None:
            return self.default, None
        if not isinstance(model, str):
            raise bad_request("'model' must be a string", "model")
        if model in self.served_names:
            return model, None
        if model in self.loras:
            return model, model
        raise APIError(404, f"The model `{model}` does not exist.", param="model")


def decode_json_body(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise bad_request("request body is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request(f"request body must be a JSON object, not {_json_type(body)}")
    return body


def parse_completion(
    body: dict[str, Any], catalog: ModelCatalog, tokenizer: Tokenizer, *, default_max_tokens: int
) -> GenerationRequest:
    if "prompt" not in body:
        raise bad_request("'prompt' is required", "prompt")
    token_ids = _prompt_token_ids(body["prompt"], tokenizer)
    return _generation(body, False, token_ids, catalog, default_max_tokens, _int_field(body, "max_tokens"))


def parse_chat(
    body: dict[str, Any], catalog: ModelCatalog, tokenizer: Tokenizer, *, default_max_tokens: int
) -> GenerationRequest:
    token_ids = tokenizer.encode(tokenizer.render_chat(_messages(body)))
    max_tokens = _int_field(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _int_field(body, "max_tokens")
    return _generation(body, True, token_ids, catalog, default_max_tokens, max_tokens)


def parse_tokenize(body: dict[str, Any], catalog: ModelCatalog, tokenizer: Tokenizer) -> list[int]:
    """vLLM's `/tokenize`: either `prompt` (a string) or chat `messages`."""
    catalog.resolve(body.get("model"))
    if "messages" in body:
        add_generation_prompt = _bool_field(body, "add_generation_prompt")
        text = tokenizer.render_chat(
            _messages(body), add_generation_prompt=True if add_generation_prompt is None else add_generation_prompt
        )
        return tokenizer.encode(text)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise bad_request("'prompt' (a string) or 'messages' is required", "prompt")
    return tokenizer.encode(prompt)


def _generation(
    body: dict[str, Any],
    chat: bool,
    token_ids: list[int],
    catalog: ModelCatalog,
    default_max_tokens: int,
    max_tokens: int | None,
) -> GenerationRequest:
    model, lora_name = catalog.resolve(body.get("model"))
    limit = catalog.max_model_len
    if max_tokens is not None and max_tokens < 1:
        raise bad_request(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    if max_tokens is None:
        max_tokens = max(1, min(default_max_tokens, limit - len(token_ids)))
    if len(token_ids) + max_tokens > limit:
        where = "messages" if chat else "prompt"
        raise bad_request(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{len(token_ids) + max_tokens} tokens ({len(token_ids)} in the {where}, {max_tokens} in the "
            f"completion). Please reduce the length of the {where} or completion.",
            "max_tokens",
        )
    n = _int_field(body, "n")
    if n is not None and n != 1:
        raise bad_request("only n=1 is supported", "n")
    stream = bool(_bool_field(body, "stream"))
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise bad_request("'stream_options' must be an object", "stream_options")
        if not stream:
            raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
        include_usage = bool(_bool_field(options, "include_usage", "stream_options.include_usage"))
    return GenerationRequest(
        chat=chat,
        model=model,
        lora_name=lora_name,
        prompt_token_ids=token_ids,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
        cache_hit_threshold=_threshold(body),
        kv_transfer_params=_object_field(body, "kv_transfer_params"),
        seed=_int_field(body, "seed"),
    )


def _prompt_token_ids(prompt: Any, tokenizer: Tokenizer) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("the prompt must not be empty", "prompt")
        return tokenizer.encode(prompt)
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        for token in prompt:
            if not 0 <= token < VOCAB_SIZE:
                raise bad_request(f"token id {token} is out of vocabulary (0..{VOCAB_SIZE - 1})", "prompt")
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        raise bad_request("batched prompts are not supported; send one prompt per request", "prompt")
    raise bad_request("'prompt' must be a non-empty string or a non-empty list of token ids", "prompt")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object", "messages")
        if not isinstance(message.get("role"), str):
            raise bad_request(f"{where}.role must be a string", "messages")
        content = message.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise bad_request(f"{where}.content must be a string or a list of parts", "messages")
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{where}.content parts must be {{'type': 'text', 'text': str}}", "messages")
    return messages


def _threshold(body: dict[str, Any]) -> float | None:
    value = body.get("cache_hit_threshold")
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise bad_request("'cache_hit_threshold' must be a number", "cache_hit_threshold")
    if not 0 <= value <= 1:
        raise bad_request(f"'cache_hit_threshold' must be between 0 and 1, got {value}", "cache_hit_threshold")
    return float(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise bad_request(f"'{name}' must be an integer, not {_json_type(value)}", name)
    result: int = value
    return result


def _bool_field(body: dict[str, Any], name: str, param: str | None = None) -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise bad_request(f"'{param or name}' must be a boolean, not {_json_type(value)}", param or name)


def _object_field(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None or isinstance(value, dict):
        return value
    raise bad_request(f"'{name}' must be an object, not {_json_type(value)}", name)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
