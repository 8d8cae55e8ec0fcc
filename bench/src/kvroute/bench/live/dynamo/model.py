"""The model directory Dynamo's frontend and workers load: a Llama-style card whose vocabulary is the simulator's.

Dynamo registers a model from a local directory (`config.json`, `tokenizer.json`, `tokenizer_config.json` with a
chat template, `generation_config.json`); no weights are read and nothing is downloaded. The benchmark sends the
frontend token ids, the simulator's own ids (`0..VOCAB_SIZE-1`), so the tokenizer written here only has to
accept every such id and turn the simulator's output back into its text:

- ids 0..255 are the 256 byte-level symbols (in code-point order), so any text encodes, one token per byte;
- the next ids are the simulator's output words (and the merges that build them), each word one token, so the
  worker adapter encodes a streamed chunk into exactly one id that detokenizes to the simulator's text;
- the remaining ids up to `VOCAB_SIZE - 1` are inert fillers (`<t123>`), there only so that every prompt id the
  simulator accepts is a valid id here;
- `VOCAB_SIZE` and `VOCAB_SIZE + 1` are the begin- and end-of-text specials, outside the simulator's range, so no
  prompt id is ever taken for an end of sequence.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from kvroute.simulator.tokenizer import VOCAB_SIZE
from kvroute.simulator.tokenizer import Tokenizer as SimTokenizer

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
BOS_ID = VOCAB_SIZE
EOS_ID = VOCAB_SIZE + 1
# Output words repeat with a short period; this many indices visit every one of them.
_OUTPUT_SAMPLES = 256
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def output_words() -> list[str]:
    """The simulator's output words, in first-seen order."""
    sim = SimTokenizer()
    return list(dict.fromkeys(sim.output_text(0, index) for index in range(_OUTPUT_SAMPLES)))


def build_tokenizer() -> Tokenizer:
    # One pre-token per text (no regex split), so a word with spaces in it can still be a single token.
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    vocab: dict[str, int] = {}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in output_words():
        (piece, _span), *_ = byte_level.pre_tokenize_str(word)
        # Merge left to right, one symbol at a time: "t"+"h", "th"+"e", "the"+"Ġ".
        for end in range(2, len(piece) + 1):
            if piece[:end] not in vocab:
                merges.append((piece[: end - 1], piece[end - 1]))
                vocab[piece[:end]] = len(vocab)
    for token_id in range(len(vocab), VOCAB_SIZE):
        vocab[f"<t{token_id}>"] = token_id
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(BOS, special=True), AddedToken(EOS, special=True)])
    return tokenizer


def write_model_dir(directory: Path, model_name: str, *, max_model_len: int = 131_072) -> Path:
    """Write the model directory for `model_name` into `directory` (created if missing); returns `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    if (tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)) != (BOS_ID, EOS_ID):
        raise AssertionError("the special tokens did not land right after the simulator's vocabulary")
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "_name_or_path": model_name,
        "vocab_size": EOS_ID + 1,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": max_model_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "torch_dtype": "bfloat16",
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "tie_word_embeddings": False,
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_model_len,
        "chat_template": CHAT_TEMPLATE,
    }
    generation_config = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID}
    for name, document in (
        ("config.json", config),
        ("tokenizer_config.json", tokenizer_config),
        ("generation_config.json", generation_config),
    ):
        (directory / name).write_text(json.dumps(document, indent=2) + "\n")
    return directory
