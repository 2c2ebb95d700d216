"""Offline token counting and truncation with cl100k_base."""

from __future__ import annotations

from app.embedding.providers.token_count import count_tokens, truncate


def test_counts_match_cl100k() -> None:
    assert count_tokens("") == 0
    assert count_tokens("hello world") == 2
    assert count_tokens("deploy" + " deploy" * 99) == 100


def test_special_token_text_is_counted_as_plain_text() -> None:
    assert count_tokens("<|endoftext|>") > 1


def test_short_text_is_left_alone() -> None:
    assert truncate("hello world", 10) == ("hello world", False)
    assert truncate("hello world", 2) == ("hello world", False)


def test_long_text_is_cut_at_a_token_boundary() -> None:
    text = "deploy " * 100
    cut, truncated = truncate(text, 10)
    assert truncated and cut == "deploy " * 9 + "deploy"
    assert count_tokens(cut) == 10 and text.startswith(cut)


def test_a_cut_never_leaves_half_a_character() -> None:
    text = "Користувачі не можуть увійти 🔐🔐🔐 " * 20
    for limit in range(1, 40):
        cut, truncated = truncate(text, limit)
        assert truncated and text.startswith(cut) and "\ufffd" not in cut
        assert count_tokens(cut) <= limit


def test_texts_past_the_tokenizer_guards_are_counted_and_cut() -> None:
    # The tokenizer refuses a million characters, or 200,000 tokens, in one call.
    text = "a" + " a" * 599_999
    assert count_tokens(text) == 600_000
    cut, truncated = truncate(text, 8191)
    assert truncated and count_tokens(cut) == 8191 and text.startswith(cut)
