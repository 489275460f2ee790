"""Tests of listener.queue.split: reply formats, trimming, cutting, the part cap, losslessness."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from functools import partial

import pytest

from listener.queue.split import ReplyTooLong, UnsplittableReply, split_content, split_reply


def _words(parts: list[str]) -> list[str]:
    return " ".join(parts).split()


def _glyphs(parts: list[str]) -> str:
    """The non-whitespace characters in order: survives even a hard cut inside a word."""
    return "".join(_words(parts))


# Formats


def test_json_object_is_parsed() -> None:
    assert split_reply('{"messages": ["Olá!", "Tudo bem?"]}') == ["Olá!", "Tudo bem?"]


def test_json_object_with_surrounding_whitespace_is_parsed() -> None:
    assert split_reply('\n  {"messages": ["a", "b"]}  \n') == ["a", "b"]


def test_bare_json_array_is_parsed() -> None:
    assert split_reply('["one", "two", "three"]') == ["one", "two", "three"]


def test_fenced_json_is_parsed() -> None:
    reply = '```json\n{"messages": ["first", "second"]}\n```'
    assert split_reply(reply) == ["first", "second"]


def test_a_fence_with_words_around_it_is_parsed_and_the_words_left_out() -> None:
    before = 'Aqui está:\n\n```json\n{"messages": ["Oi João", "Tudo bem?"]}\n```'
    after = '```json\n{"messages": ["a", "b"]}\n```\nEspero que ajude!'
    both = 'Claro!\n```\n["x", "y"]\n```\nAté mais.'
    assert split_reply(before) == ["Oi João", "Tudo bem?"]
    assert split_reply(after) == ["a", "b"]
    assert split_reply(both) == ["x", "y"]


def test_the_first_fence_of_the_right_shape_wins() -> None:
    reply = 'Exemplo:\n```\nprint(1)\n```\nResposta:\n```json\n{"messages": ["ok"]}\n```'
    assert split_reply(reply) == ["ok"]


def test_a_fence_without_json_is_ordinary_text() -> None:
    reply = "Veja ```print(1)``` aqui\n\nOutro parágrafo"
    assert split_reply(reply) == ["Veja ```print(1)``` aqui", "Outro parágrafo"]


def test_plain_fence_is_parsed() -> None:
    assert split_reply('```\n["first", "second"]\n```') == ["first", "second"]


def test_fence_with_surrounding_whitespace_is_parsed() -> None:
    assert split_reply('  \n```JSON\n  ["x", "y"]  \n```\n ') == ["x", "y"]


def test_bar_separator_lines_split_parts() -> None:
    reply = "Primeira parte.\n|||\nSegunda parte.\n  |||  \nTerceira."
    assert split_reply(reply) == ["Primeira parte.", "Segunda parte.", "Terceira."]


def test_bar_inside_a_line_is_not_a_separator() -> None:
    reply = "a ||| b\n\nc"
    assert split_reply(reply) == ["a ||| b", "c"]


def test_bar_separator_keeps_blank_lines_within_a_part() -> None:
    reply = "line one\n\nline two\n|||\nnext"
    assert split_reply(reply) == ["line one\n\nline two", "next"]


def test_paragraphs_split_on_blank_lines() -> None:
    reply = "Primeiro parágrafo.\n\nSegundo parágrafo.\n \t\n\n\nTerceiro."
    assert split_reply(reply) == ["Primeiro parágrafo.", "Segundo parágrafo.", "Terceiro."]


def test_single_line_breaks_stay_inside_a_paragraph() -> None:
    assert split_reply("linha um\nlinha dois") == ["linha um\nlinha dois"]


def test_single_paragraph_is_one_part() -> None:
    assert split_reply("Só uma mensagem, sem mais nada.") == ["Só uma mensagem, sem mais nada."]


def test_numbers_in_json_array_become_strings() -> None:
    assert split_reply('{"messages": ["code", 42, 1.5]}') == ["code", "42", "1.5"]


# Trimming, dropping, order


def test_parts_are_trimmed_and_empty_ones_dropped() -> None:
    reply = '{"messages": ["  hello  ", "", "   ", "\\n world\\n"]}'
    assert split_reply(reply) == ["hello", "world"]


def test_empty_bar_parts_are_dropped() -> None:
    assert split_reply("|||\n a \n|||\n|||\n b\n|||") == ["a", "b"]


def test_order_is_kept() -> None:
    items = [f"part {i}" for i in range(5)]
    assert split_reply(json.dumps({"messages": items})) == items


# Cutting long parts


def test_long_part_is_cut_at_a_sentence_boundary() -> None:
    text = "First one. Second one! Third one? Fourth."
    # Limit 25 reaches into "Third": the last boundary at or before it is after "one!".
    assert split_reply(text, max_chars=25) == ["First one. Second one!", "Third one? Fourth."]


def test_ellipsis_is_a_sentence_boundary() -> None:
    assert split_reply("Espera… Já volto.", max_chars=10) == ["Espera…", "Já volto."]


def test_terminator_without_following_whitespace_is_not_a_boundary() -> None:
    # "3.14" is no boundary; the cut falls back to the last whitespace.
    assert split_reply("pi is 3.14 roughly", max_chars=12) == ["pi is 3.14", "roughly"]


def test_long_sentence_without_punctuation_is_cut_at_whitespace() -> None:
    text = " ".join(["palavra"] * 20)
    parts = split_reply(text, max_chars=30, max_parts=100)
    assert parts[0] == "palavra palavra palavra"
    assert all(len(p) <= 30 for p in parts)
    assert _words(parts) == text.split()


def test_word_longer_than_max_chars_is_hard_cut() -> None:
    word = "x" * 25
    assert split_reply(word, max_chars=10) == ["x" * 10, "x" * 10, "x" * 5]


def test_long_word_between_sentences_is_hard_cut_without_loss() -> None:
    text = "Oi. " + "a" * 12 + " fim"
    parts = split_reply(text, max_chars=5, max_parts=10)
    assert parts == ["Oi.", "aaaaa", "aaaaa", "aa", "fim"]


def test_part_at_exactly_max_chars_is_not_cut() -> None:
    assert split_reply("a" * 10, max_chars=10) == ["a" * 10]


# The part cap


def test_extra_parts_are_merged_into_the_last() -> None:
    items = ["a", "b", "c", "d", "e", "f", "g"]
    assert split_reply(json.dumps(items), max_parts=3) == ["a", "b", "c\n\nd\n\ne\n\nf\n\ng"]


def test_merge_applies_after_the_cut() -> None:
    reply = json.dumps(["Oi.", "Um dois. Três quatro.", "Fim."])
    parts = split_reply(reply, max_chars=20, max_parts=3)
    assert parts == ["Oi.", "Um dois.", "Três quatro.\n\nFim."]


def test_a_merge_that_would_overflow_the_last_part_re_packs_the_parts() -> None:
    items = ["aaaa", "bbbb", "cccc", "dddd", "eeee"]
    # Merging c, d and e would make a 16-character part; packed in order, all fit in 10.
    parts = split_reply(json.dumps(items), max_parts=3, max_chars=10)
    assert parts == ["aaaa\n\nbbbb", "cccc\n\ndddd", "eeee"]


def test_re_packing_crosses_the_replys_own_boundaries_at_sentence_ends() -> None:
    # Kept as given, the three parts need three messages; re-cut as one text, two suffice.
    parts = split_reply(json.dumps(["Aa.", "Bb. Cc.", "Dd."]), max_parts=2, max_chars=8)
    assert parts == ["Aa.\n\nBb.", "Cc.\n\nDd."]


def test_re_packing_prefers_whitespace_to_a_cut_inside_a_word() -> None:
    # Sentence ends come early in each window; cutting at the last space fits in two parts.
    text = "Oi. abc def ghi. jkl mno"
    parts = split_reply(text, max_parts=2, max_chars=12)
    assert parts == ["Oi. abc def", "ghi. jkl mno"]


def test_text_that_fits_only_with_hard_cuts_is_hard_cut() -> None:
    assert split_reply("x" * 50, max_parts=5, max_chars=10) == ["x" * 10] * 5
    # Cut at the space, "ab abcdefg" needs three parts of five; cut hard it fits in two.
    assert split_reply("ab abcdefg", max_parts=2, max_chars=5) == ["ab ab", "cdefg"]


def test_a_text_longer_than_every_part_together_is_too_long() -> None:
    with pytest.raises(ReplyTooLong) as caught:
        split_reply("x" * 51, max_parts=5, max_chars=10)
    assert str(caught.value) == "the reply is 51 characters: more than 5 parts of 10 characters"
    assert (caught.value.length, caught.value.max_parts, caught.value.max_chars) == (51, 5, 10)


def test_a_megabyte_reply_is_refused_with_its_length_not_sent_as_one_part() -> None:
    reply = json.dumps({"messages": ["Olá! Tudo bem? " * 67_000]})
    with pytest.raises(ReplyTooLong) as caught:
        split_reply(reply, max_parts=5, max_chars=1000)
    assert str(caught.value) == (
        "the reply is 1,004,999 characters: more than 5 parts of 1,000 characters"
    )
    # The processor catches UnsplittableReply: asks the LLM again, then fails the message.
    assert isinstance(caught.value, UnsplittableReply)


def test_words_too_many_for_the_limits_are_too_long() -> None:
    with pytest.raises(ReplyTooLong, match="the reply is 33 characters"):
        split_reply("Um dois. Três quatro. Cinco seis.", max_chars=12, max_parts=2)


def test_max_parts_one_merges_everything() -> None:
    assert split_reply("a\n\nb\n\nc", max_parts=1) == ["a\n\nb\n\nc"]


def test_invalid_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_parts"):
        split_reply("a", max_parts=0)
    with pytest.raises(ValueError, match="max_chars"):
        split_content("a", max_chars=0)


# Fallbacks from JSON


def test_unterminated_json_falls_back_losslessly() -> None:
    reply = '{"messages": ["a", '
    assert split_reply(reply) == ['{"messages": ["a",']


def test_malformed_json_with_paragraphs_falls_back_to_paragraphs() -> None:
    reply = '{"messages": ["one"\n\n"two"]}'
    assert split_reply(reply) == ['{"messages": ["one"', '"two"]}']


def test_wrong_key_falls_back_to_the_whole_text() -> None:
    assert split_reply('{"foo": 1}') == ['{"foo": 1}']


def test_messages_not_a_list_falls_back_to_the_whole_text() -> None:
    assert split_reply('{"messages": "hello"}') == ['{"messages": "hello"}']


def test_non_string_items_fall_back_to_the_whole_text() -> None:
    reply = '{"messages": ["a", null, {"b": 1}]}'
    assert split_reply(reply) == [reply]


def test_json_scalar_falls_back_to_the_whole_text() -> None:
    assert split_reply('"just a string"') == ['"just a string"']


def test_wrong_shape_fenced_json_keeps_the_fence_text() -> None:
    reply = '```json\n{"foo": "bar"}\n```'
    assert split_reply(reply) == [reply]


def test_wrong_shape_json_falls_back_to_bar_lines() -> None:
    reply = '{"foo": 1}\n|||\nsecond'
    assert split_reply(reply) == ['{"foo": 1}', "second"]


# Nothing to send


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   \n\t ",
        '{"messages": []}',
        "[]",
        '{"messages": ["", "  "]}',
        "|||",
        "```json\n[]\n```",
    ],
)
def test_reply_without_content_is_unsplittable(reply: str) -> None:
    with pytest.raises(UnsplittableReply):
        split_reply(reply)


def test_unsplittable_reply_is_a_value_error() -> None:
    assert issubclass(UnsplittableReply, ValueError)


# Unicode


def test_unicode_is_preserved() -> None:
    items = ["Olá, João! Você já viu a promoção? 🎉", "Até amanhã 👋🏽 ção ñ"]
    assert split_reply(json.dumps({"messages": items})) == items
    assert split_reply(json.dumps(items, ensure_ascii=False)) == items
    assert split_reply("\n\n".join(items)) == items


def test_unicode_is_preserved_when_cut() -> None:
    text = "Olá, João! Promoção imperdível 🎉. Até já…"
    parts = split_reply(text, max_chars=15, max_parts=10)
    assert all(len(p) <= 15 for p in parts)
    assert _words(parts) == text.split()


# split_content


def test_content_is_sent_as_is() -> None:
    content = '  {"messages": ["a", "b"]}\n|||\nc\n\nd  '
    assert split_content(content) == ['{"messages": ["a", "b"]}\n|||\nc\n\nd']


def test_long_content_is_cut_at_sentence_boundaries() -> None:
    content = "First one. Second one! Third one? Fourth."
    assert split_content(content, max_chars=25) == ["First one. Second one!", "Third one? Fourth."]


def test_long_content_is_capped_by_max_parts() -> None:
    content = "Aa. Bb. Cc. Dd."
    assert split_content(content, max_chars=7, max_parts=2) == ["Aa. Bb.", "Cc. Dd."]
    with pytest.raises(ReplyTooLong) as caught:
        split_content(content, max_chars=3, max_parts=2)
    assert str(caught.value) == "the content is 15 characters: more than 2 parts of 3 characters"


@pytest.mark.parametrize("content", ["", " ", "\n\t\n"])
def test_empty_content_is_unsplittable(content: str) -> None:
    with pytest.raises(UnsplittableReply):
        split_content(content)


# Losslessness over generated inputs

_VOCAB = [
    "olá",
    "João",
    "promoção",
    "você",
    "amanhã",
    "🎉",
    "👋🏽",
    "fim.",
    "sério?",
    "ok!",
    "então…",
    "3.14",
    "a",
    "e-mail",
    '"aspas"',
    "{chave}",
    "[x]",
]


def _random_word(rng: random.Random, long_words: bool = False) -> str:
    if long_words and rng.random() < 0.05:
        return "".join(rng.choice("abcçãé🎉") for _ in range(rng.randint(20, 150)))
    return rng.choice(_VOCAB)


def _random_part(rng: random.Random, long_words: bool) -> str:
    if rng.random() < 0.1:
        return rng.choice(["", "  ", "\t"])
    words = [_random_word(rng, long_words) for _ in range(rng.randint(1, 40))]
    # Single spaces or single line breaks only, so a part never contains a blank line.
    return "".join(w + rng.choice([" ", " ", " ", "\n"]) for w in words).strip()


def _encode(rng: random.Random, parts: list[str]) -> str:
    form = rng.choice(["object", "array", "fence_json", "fence_plain", "bars", "paragraphs"])
    if form == "object":
        return json.dumps({"messages": parts}, ensure_ascii=rng.random() < 0.5)
    if form == "array":
        return json.dumps(parts)
    if form == "fence_json":
        return "```json\n" + json.dumps({"messages": parts}, indent=2) + "\n```"
    if form == "fence_plain":
        return "```\n" + json.dumps(parts) + "\n```"
    if form == "bars":
        return rng.choice(["\n|||\n", "\n  |||\t\n"]).join(parts)
    return rng.choice(["\n\n", "\n \n", "\n\n\n"]).join(parts)


def _generated_cases() -> list[tuple[list[str], str, int, int]]:
    rng = random.Random(20240611)
    cases = []
    for _ in range(300):
        long_words = rng.random() < 0.3  # words longer than max_chars force hard cuts
        parts = [_random_part(rng, long_words) for _ in range(rng.randint(1, 9))]
        parts.append(" ".join(_random_word(rng) for _ in range(rng.randint(1, 5))))  # non-empty
        rng.shuffle(parts)
        max_chars = rng.choice([rng.randint(8, 40), rng.randint(40, 400)])
        cases.append((parts, _encode(rng, parts), rng.randint(1, 8), max_chars))
    return cases


def _assert_well_formed(parts: list[str], max_parts: int, max_chars: int) -> None:
    assert 1 <= len(parts) <= max_parts
    assert all(p and p == p.strip() for p in parts)
    assert all(len(p) <= max_chars for p in parts)  # the last one too, merged or not


def _whole(parts: list[str]) -> str:
    """The text the parts make together, as queue/split.py measures it."""
    return "\n\n".join(p.strip() for p in parts if p.strip())


def _check_split(
    split: Callable[[], list[str]], original: list[str], max_parts: int, max_chars: int
) -> bool:
    """Split and check the promises: nothing lost, no part too long, or refused only when the
    text is longer than every part together. Returns whether it was refused."""
    whole = _whole(original)
    try:
        parts = split()
    except ReplyTooLong as exc:
        assert exc.length == len(whole) > max_parts * max_chars
        return True
    _assert_well_formed(parts, max_parts, max_chars)
    assert _glyphs(parts) == _glyphs([whole])
    longest = max(len(w) for w in whole.split())
    if longest < max_chars and len(whole) <= max_parts * (max_chars - longest):
        # Room to spare for cutting at whitespace: no word is cut.
        assert _words(parts) == whole.split()
    return False


def test_split_reply_is_lossless_over_generated_inputs() -> None:
    cases = _generated_cases()
    refused = 0
    for original, reply, max_parts, max_chars in cases:
        split = partial(split_reply, reply, max_parts=max_parts, max_chars=max_chars)
        refused += _check_split(split, original, max_parts, max_chars)
    assert 0 < refused < len(cases)  # both outcomes are exercised


def test_split_content_is_lossless_over_generated_inputs() -> None:
    for _, content, max_parts, max_chars in _generated_cases():
        split = partial(split_content, content, max_parts=max_parts, max_chars=max_chars)
        _check_split(split, [content], max_parts, max_chars)


def test_malformed_json_is_lossless_over_generated_inputs() -> None:
    rng = random.Random(7)
    for original, _, max_parts, max_chars in _generated_cases():
        reply = json.dumps({"messages": original})
        broken = reply[: rng.randint(1, len(reply) - 1)]  # a truncated, never-valid reply
        if not broken.strip() or _is_valid_json(broken):
            continue
        try:
            parts = split_reply(broken, max_parts=max_parts, max_chars=max_chars)
        except ReplyTooLong as exc:
            # Blank lines or `|||` between parts are at least as long as the separator.
            assert len(broken.strip()) >= exc.length > max_parts * max_chars
            continue
        _assert_well_formed(parts, max_parts, max_chars)
        assert _glyphs(parts) == _glyphs([broken])


def _near_the_limit_cases() -> list[tuple[list[str], int, int]]:
    """Replies from half to one and a half times what the limits hold, where re-packing and
    re-cutting decide whether the reply fits."""
    rng = random.Random(20261127)
    cases = []
    for _ in range(400):
        max_parts, max_chars = rng.randint(1, 6), rng.randint(12, 120)
        target = int(max_parts * max_chars * rng.uniform(0.5, 1.5))
        parts: list[str] = []
        while len(_whole(parts)) < target:
            words = [_random_word(rng, rng.random() < 0.2) for _ in range(rng.randint(1, 12))]
            parts.append(" ".join(words))
        cases.append((parts, max_parts, max_chars))
    return cases


def test_replies_near_the_limits_fit_whenever_their_length_does() -> None:
    refused = fitted = 0
    for original, max_parts, max_chars in _near_the_limit_cases():
        reply = json.dumps({"messages": original}, ensure_ascii=False)
        split = partial(split_reply, reply, max_parts=max_parts, max_chars=max_chars)
        if _check_split(split, original, max_parts, max_chars):
            refused += 1
        else:
            fitted += 1
    assert refused > 50 and fitted > 50


def _is_valid_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
