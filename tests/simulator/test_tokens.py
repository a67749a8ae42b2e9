from __future__ import annotations

from modelyard.simulator.tokens import filler_text, render_chat, token_strs, tokenize


def test_tokenize_is_deterministic_and_word_based() -> None:
    assert tokenize("Hello, world!") == tokenize("Hello, world!")
    assert len(tokenize("Hello, world!")) == 4
    assert token_strs("Hello, world!") == ["Hello", ",", " world", "!"]
    assert tokenize("a b")[0] != tokenize("b a")[0]
    assert tokenize("") == []


def test_conversations_with_a_shared_head_share_a_token_prefix() -> None:
    head = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "one two three"}]
    a = tokenize(render_chat([*head, {"role": "assistant", "content": "x"}, {"role": "user", "content": "more"}]))
    b = tokenize(render_chat(head))
    shared = tokenize(render_chat(head, add_generation_prompt=False))
    assert a[:len(shared)] == shared == b[:len(shared)]


def test_content_parts_are_read() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}]
    assert "hi" in render_chat(parts)


def test_filler() -> None:
    assert filler_text(0, 3) == " the quick brown"
    assert len(tokenize(filler_text(5, 40))) == 40
