"""Fuzzed request bodies never get a 500 or a hang: every answer is a success or an OpenAI error envelope."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from tests.conftest import ThreadedServer, gateway_settings

pytestmark = pytest.mark.slow

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["messages", "model", "logprobs", "max_completion_tokens", "max_tokens", "n", "seed", "stop", "stream",
          "stream_options", "temperature", "top_logprobs", "top_p", "user", "add_generation_prompt",
          "continue_final_message", "prompt_logprobs", "return_token_ids", "ignore_eos", "unknown_field",
          "frequency_penalty", "presence_penalty", "logit_bias", "repetition_penalty", "min_p", "top_k",
          "stop_token_ids", "metadata", "tools"]
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "", 3]),
                                 "content": JSON_VALUES | st.text(max_size=30)})
VALID = {"model": "kdgate-demo", "messages": [{"role": "user", "content": "My order 12345 is late"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def small_gateway(demo_dirs, engine_server):
    app = create_app(gateway_settings(demo_dirs, engine_server, max_tokens_limit=8, default_max_tokens=8))
    with ThreadedServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=3),
       messages=st.none() | st.lists(MESSAGE, max_size=3))
def test_fuzzed_bodies_get_success_or_an_error_envelope(small_gateway, changes, messages):
    body = dict(VALID, **changes)
    if messages is not None:
        body["messages"] = messages
    response = small_gateway.post("/v1/chat/completions", content=json.dumps(body))
    assert response.status_code in (200, 400, 404, 413), response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.rstrip().endswith("data: [DONE]")
    else:
        assert response.json()["object"] == "chat.completion"
