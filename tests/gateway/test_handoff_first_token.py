"""A handoff at the student's very first token: nothing was released, so the teacher answers the conversation as the
client sent it (an empty assistant message to continue was refused by the teacher with a 400, and the client got
that 400 for a request it never made wrong)."""

from __future__ import annotations

import math

import pytest
from openai import OpenAI

from tests.gateway.test_handoff import MIN_PROB, handoff_gateway  # noqa: F401  (the fixture)

SHORT_PROMPTS = ["hi", "urgent", "order 123", "help", "refund please", "hello?"]


@pytest.fixture
def client(handoff_gateway) -> OpenAI:  # noqa: F811
    return OpenAI(base_url=f"{handoff_gateway.url}/v1", api_key="unused", max_retries=0)


def first_token_collapses(client: OpenAI, prompt: str) -> bool:
    completion = client.chat.completions.create(
        model="kdgate-demo", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=4,
        logprobs=True, top_logprobs=1, extra_headers={"x-kdgate-force": "student"})
    return completion.choices[0].logprobs.content[0].logprob < math.log(MIN_PROB)


@pytest.fixture(scope="module")
def collapsing(handoff_gateway) -> list[str]:  # noqa: F811
    client = OpenAI(base_url=f"{handoff_gateway.url}/v1", api_key="unused", max_retries=0)
    found = [prompt for prompt in SHORT_PROMPTS if first_token_collapses(client, prompt)]
    assert found, "no short prompt makes the demo student unsure of its first token: the test has nothing to send"
    return found


@pytest.mark.parametrize("stream", [False, True])
def test_a_handoff_at_the_first_token_is_the_teachers_own_answer(client, collapsing, stream):
    for prompt in collapsing:
        messages = [{"role": "user", "content": prompt}]
        teacher = client.chat.completions.create(model="kdgate-demo", messages=messages, temperature=0,
                                                 max_tokens=32, extra_headers={"x-kdgate-force": "teacher"})
        if stream:
            chunks = list(client.chat.completions.create(model="kdgate-demo", messages=messages, temperature=0,
                                                         max_tokens=32, stream=True,
                                                         stream_options={"include_usage": True}))
            text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
            kdgate, usage = chunks[-1].model_extra["kdgate"], chunks[-1].usage
        else:
            answer = client.chat.completions.create(model="kdgate-demo", messages=messages, temperature=0,
                                                    max_tokens=32)
            text, kdgate, usage = answer.choices[0].message.content, answer.model_extra["kdgate"], answer.usage
        assert (kdgate["route"], kdgate["reason"]) == ("teacher", "handoff"), prompt
        assert text == teacher.choices[0].message.content, prompt
        assert usage.completion_tokens == teacher.usage.completion_tokens, prompt
