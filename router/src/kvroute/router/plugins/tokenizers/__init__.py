"""Prompt tokenizers for the plugins that need the engine's token ids (`precise-prefix-cache-scorer`).

- `estimate` (`estimate.EstimateTokenizer`): four characters per token, kvroute simulator's ids; keys match only
  against simulators.
- `hf` (`hf.HFTokenizer`): the model's `tokenizer.json` and chat template, in process.
- `engine` (`engine.EngineTokenizer`): the model server's own `POST /tokenize`.
"""

from __future__ import annotations

from typing import Literal

from kvroute.router.plugins.tokenizers.base import PromptTokenizer, TokenizeError
from kvroute.router.plugins.tokenizers.engine import EngineTokenizer
from kvroute.router.plugins.tokenizers.estimate import EstimateTokenizer
from kvroute.router.plugins.tokenizers.hf import HFTokenizer

TokenizerKind = Literal["estimate", "hf", "engine"]


def make_tokenizer(kind: TokenizerKind, *, path: str | None = None, timeout: float = 1.0) -> PromptTokenizer:
    """The tokenizer of `kind`; `path` (required for `hf`) is its `tokenizer.json`, `timeout` bounds `engine`."""
    if kind == "estimate":
        return EstimateTokenizer()
    if kind == "hf":
        if path is None:
            raise ValueError("the hf tokenizer needs a path")
        return HFTokenizer(path)
    return EngineTokenizer(timeout)


__all__ = [
    "EngineTokenizer",
    "EstimateTokenizer",
    "HFTokenizer",
    "PromptTokenizer",
    "TokenizeError",
    "TokenizerKind",
    "make_tokenizer",
]
