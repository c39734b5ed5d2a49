"""The official `openai` SDK against the gateway, unchanged: non-streaming, streaming, logprobs, errors."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

TICKET = "Order #58514: the SmartHub Pro charged me twice. We are an Enterprise customer. Regards, Kofi Silva"


@pytest.fixture
def client(gateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0)


def test_sdk_non_streaming(client):
    completion = client.chat.completions.create(model="kdgate-demo", messages=[{"role": "user", "content": TICKET}],
                                                max_tokens=20, temperature=0)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.model_extra["kdgate"]["route"] == "student"


def test_sdk_streaming_with_usage(client):
    stream = client.chat.completions.create(model="kdgate-demo", messages=[{"role": "user", "content": TICKET}],
                                            max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finish in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    non_streamed = client.chat.completions.create(model="kdgate-demo", messages=[{"role": "user", "content": TICKET}],
                                                  max_tokens=20, temperature=0)
    assert text == non_streamed.choices[0].message.content


def test_sdk_logprobs_with_top_5(client):
    completion = client.chat.completions.create(model="kdgate-demo", messages=[{"role": "user", "content": TICKET}],
                                                max_tokens=10, temperature=0, logprobs=True, top_logprobs=5)
    content = completion.choices[0].logprobs.content
    assert len(content) == completion.usage.completion_tokens
    assert all(len(entry.top_logprobs) == 5 and entry.logprob <= 0 for entry in content)
    assert "".join(entry.token for entry in content).startswith(completion.choices[0].message.content)


def test_sdk_streamed_logprobs_match_non_streamed(client):
    kwargs = dict(model="kdgate-demo", messages=[{"role": "user", "content": TICKET}], max_tokens=10,
                  temperature=0, logprobs=True, top_logprobs=5)
    whole = client.chat.completions.create(**kwargs).choices[0].logprobs.content
    streamed = [entry for chunk in client.chat.completions.create(stream=True, **kwargs)
                if chunk.choices and chunk.choices[0].logprobs for entry in chunk.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in whole]
    assert all(abs(a.logprob - b.logprob) < 1e-5 for a, b in zip(streamed, whole, strict=True))


def test_sdk_forced_teacher(client):
    response = client.chat.completions.with_raw_response.create(
        model="kdgate-demo", messages=[{"role": "user", "content": TICKET}], max_tokens=5,
        extra_headers={"x-kdgate-force": "teacher"})
    assert response.headers["x-kdgate-route"] == "teacher"
    assert response.parse().model_extra["kdgate"]["model"] == "demo-teacher"


def test_sdk_raises_bad_request_with_param(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="kdgate-demo", messages=[{"role": "user", "content": TICKET}], n=2)
    assert caught.value.body["param"] == "n"
