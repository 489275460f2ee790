"""Text from outside, and lists of texts written as JSON."""

from __future__ import annotations

import json
import random

from listener.text import json_texts


def test_texts_as_json_are_what_json_dumps_writes() -> None:
    """json_texts writes a message's parts (and the sandbox's reply) without an encoder per
    call: its text is json.dumps's, escapes, non-ASCII, NUL and lone surrogates included."""
    samples = [
        "",
        "Olá, Ana! Vi o trabalho da Padaria em São Paulo.",
        'aspas " e \\ barra',
        "linhas\nnovas\r\te\b\f",
        "\x00\x01\x1f\x7f",
        "lone \ud800 surrogate \udfff",
        "emoji 🎉 e 中文",
        "\u2028\u2029",
    ]
    rng = random.Random(26)
    alphabet = [chr(c) for c in (*range(0, 128), 0xE9, 0x2028, 0xD800, 0xDC00, 0x1F389)]
    samples += ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(2000)]
    for size in range(4):
        for start in range(0, len(samples), 7):
            texts = samples[start : start + size]
            assert json_texts(texts) == json.dumps(texts, ensure_ascii=False), texts
            reply = '{"messages": ' + json_texts(texts) + "}"  # the sandbox LLM's reply
            assert reply == json.dumps({"messages": texts}, ensure_ascii=False)
