from __future__ import annotations

from kvroute.simulator.tokenizer import Tokenizer, content_text


def test_four_characters_per_token_and_prefix_stability() -> None:
    tokenizer = Tokenizer()
    text = "The quick brown fox jumps over the lazy dog"
    ids = tokenizer.encode(text)
    assert len(ids) == 11 == tokenizer.count(text)
    assert tokenizer.encode(text + " again")[:10] == ids[:10]
    assert tokenizer.encode(text) == ids  # deterministic


def test_chat_template_is_fixed() -> None:
    rendered = Tokenizer().render_chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    )
    assert rendered == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"


def test_content_text_accepts_openai_shapes() -> None:
    assert content_text(None) == ""
    assert content_text("x") == "x"
    assert content_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, "junk"]) == "ab"


def test_invalid_surrogates_do_not_crash() -> None:
    assert len(Tokenizer().encode("ab\udcffcd")) == 2
