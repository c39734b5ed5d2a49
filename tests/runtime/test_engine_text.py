"""Stop strings and incremental detokenization: properties over many random cases."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from runtime.contract import TokenLogprob
from runtime.engine.text import IncrementalDetokenizer, StopStringBuffer


def run_buffer(pieces: list[str], stops: list[str]) -> tuple[str, int, str | None]:
    buffer = StopStringBuffer(stops)
    text, tokens = "", 0
    for index, piece in enumerate(pieces):
        released = buffer.push(piece, TokenLogprob(piece, -1.0, token_id=index))
        text += released.text
        tokens += len(released.logprobs)
        if released.stop is not None:
            return text, tokens, released.stop
    tail = buffer.flush()
    return text + tail.text, tokens + len(tail.logprobs), None


@pytest.mark.parametrize("seed", range(200))
def test_stop_buffer_output_is_the_text_before_the_first_stop(seed):
    rng = random.Random(seed)
    alphabet = "ab c"
    pieces = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3))) for _ in range(rng.randint(1, 15))]
    stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
    full = "".join(pieces)
    text, tokens, stop = run_buffer(pieces, stops)
    hits = [(full.find(s), s) for s in stops if s in full]
    if hits:
        # The first stop to complete while streaming ends the output, and nothing of it is released.
        assert stop is not None
        assert text == full[: full.find(stop)]
        assert not any(s in text for s in stops)
    else:
        assert (text, tokens, stop) == (full, len(pieces), None)


def test_stop_buffer_holds_back_a_possible_stop_prefix():
    buffer = StopStringBuffer(["END"])
    assert buffer.push("hello E", None).text == ""
    assert buffer.push("N", None).text == ""
    released = buffer.push("D tail", None)
    assert (released.text, released.stop) == ("hello ", "END")


def test_stop_buffer_releases_held_text_once_it_cannot_be_a_stop():
    buffer = StopStringBuffer(["END"])
    assert buffer.push("hello E", None).text == ""
    assert buffer.push("X", None).text == "hello EX"


@pytest.fixture(scope="module")
def tokenizer(demo_dirs):
    return AutoTokenizer.from_pretrained(str(demo_dirs[0]))


@pytest.mark.parametrize("text", ["Hi Maria, order 48213 for your SmartHub Pro.", "naïve café — ünïcödé ✓ 日本語",
                                  '{"queue": "repairs", "priority": "P1"}'])
def test_incremental_detokenizer_reproduces_the_full_decode(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prompt = tokenizer("Hello", add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(tokenizer, prompt)
    streamed = "".join(detokenizer.push(token_id) for token_id in ids)
    assert streamed == tokenizer.decode(ids, skip_special_tokens=True)
