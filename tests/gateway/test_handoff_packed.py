"""A student stream whose chunk packs several tokens (a busy vLLM does, and CI's vLLM did: the handoff test on vLLM
saw 22 tokens handed off where the rule cut at 25): the sure tokens before the collapsing one are the student's,
and the teacher continues from the collapsing token, not from the start of the chunk."""

from __future__ import annotations

import asyncio
import math

from gateway.fallback import RouteChange
from gateway.handoff import split_before, with_handoff
from router.handoff import HandoffRule
from runtime.contract import BackendInfo, Delta, Finish, GenerationRequest, SamplingParams, TokenLogprob

RULE = HandoffRule(0.9)
SURE, UNSURE = math.log(0.99), math.log(0.4)


def packed(*tokens: tuple[str, float]) -> Delta:
    return Delta("".join(text for text, _ in tokens), tuple(TokenLogprob(text, logprob) for text, logprob in tokens))


def test_a_packed_chunk_is_cut_before_its_first_unsure_token():
    sure, rest = split_before(packed(("The", SURE), (" order", SURE), (" 12", UNSURE), ("3", SURE)), 2)
    assert (sure.text, len(sure.logprobs)) == ("The order", 2)
    assert (rest.text, [entry.token for entry in rest.logprobs]) == (" 123", [" 12", "3"])
    mismatched = Delta("The order", (TokenLogprob("Th", SURE), TokenLogprob("e", UNSURE)))
    assert split_before(mismatched, 1) == (None, mismatched)  # the cut cannot be placed in its text


def test_the_teacher_continues_from_the_unsure_token_inside_a_packed_chunk():
    request = GenerationRequest("packed", ({"role": "user", "content": "where is my order?"},),
                                SamplingParams(max_tokens=20, temperature=0.0))
    sent: list[GenerationRequest] = []

    async def student():
        yield packed(("Your", SURE))
        yield packed((" order", SURE), (" ships", SURE), (" Monday", UNSURE), (".", SURE))
        yield Finish("stop", 5, 5)

    async def teacher(continued: GenerationRequest):
        sent.append(continued)
        yield Delta(" on Tuesday.")
        yield Finish("stop", 9, 3)

    async def answer() -> list:
        info = BackendInfo("student", "s", "local"), BackendInfo("teacher", "t", "local")
        return [event async for event in with_handoff(student(), request, info[0], info[1], teacher, RULE)]

    events = asyncio.run(answer())
    change = next(event for event in events if isinstance(event, RouteChange))
    assert change.handed_off_tokens == 3  # "Your", " order", " ships": the tokens before the unsure one
    assert sent[0].messages[-1] == {"role": "assistant", "content": "Your order ships"}
    text = "".join(event.text for event in events if isinstance(event, Delta))
    assert text == "Your order ships on Tuesday."
    assert events[-1].completion_tokens == 3 + 3
