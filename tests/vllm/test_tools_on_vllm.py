"""Tool calling on real vLLM (0.32 CPU): a tool conversation (tools, an assistant's `tool_calls`, a `tool` message)
under the gateway's grammar of calls gives the same tokens and logprobs on vLLM as on the local engine, both
rendering it through the model's chat template; the openai SDK's tool loop runs through the gateway in front of the
two vLLM servers, on the chat API and on the Responses API; and a client that calls vLLM directly (launched with
deploy/vllm/launch.yaml's tool flags) gets calls of the same shape."""

from __future__ import annotations

import json

import httpx
import jsonschema_rs
import pytest
from openai import OpenAI

from gateway.app import create_app
from gateway.threaded import ThreadedServer
from gateway.tools.grammar import ToolChoice, call_regex
from runtime.backends.http import HttpBackend
from runtime.contract import BackendInfo, GenerationRequest, SamplingParams
from tests.vllm.gateways import vllm_gateway_settings
from tests.vllm.test_structured_outputs_on_vllm import GOLDEN, answer, assert_agree, pair  # noqa: F401 (fixture)

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]  # the first test may wait for both servers to start

ORDER = {"type": "object", "properties": {"order_number": {"type": "string", "pattern": "^[0-9]{5}$"}},
         "required": ["order_number"], "additionalProperties": False}
LOOKUP = {"type": "function", "function": {"name": "lookup_order", "description": "Find an order by its number",
                                           "parameters": ORDER}}
CALLED = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "lookup_order",
                                                      "arguments": '{"order_number": "48213"}'}}]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"order_number": "48213", "status": "active"}'}


def tool_request(messages, choice: str) -> GenerationRequest:
    language = ToolChoice((("lookup_order", call_regex("lookup_order", ORDER, "tools[0]")),), choice).constraint()
    return GenerationRequest("tools", tuple(messages), SamplingParams(max_tokens=80, temperature=0.0, top_logprobs=5),
                             token_ids=True, structured_outputs=language.structured_outputs, tools=(LOOKUP,))


async def test_a_tool_conversation_gives_vllms_tokens_and_logprobs(pair):  # noqa: F811 (the fixture)
    engine, server = pair
    async with httpx.AsyncClient(timeout=120) as client:
        vllm = HttpBackend(BackendInfo("model", server.name, "http"), server.base_url, client)
        for index, messages in enumerate(GOLDEN[:3]):
            for choice, history in (("required", []), ("auto", [CALLED, RESULT])):
                request = tool_request([*messages, *history], choice)
                assert_agree(await answer(engine, request), await answer(vllm, request), (index, choice))


@pytest.fixture(scope="module")
def gateway(vllm_servers, tmp_path_factory):
    store = tmp_path_factory.mktemp("vllm-tools") / "shadow.sqlite3"
    with ThreadedServer(create_app(vllm_gateway_settings(vllm_servers, store))) as server:
        yield server


def test_the_sdks_tool_loop_runs_through_the_gateway_on_vllm(gateway):
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    messages = list(GOLDEN[1])
    first = client.chat.completions.create(model="kdgate-demo", messages=messages, tools=[LOOKUP],
                                           tool_choice="required", parallel_tool_calls=False, temperature=0,
                                           max_tokens=100)
    [call] = first.choices[0].message.tool_calls
    assert json.loads(call.function.arguments)["order_number"].isdigit()
    with client.chat.completions.stream(model="kdgate-demo", messages=messages, tools=[LOOKUP], temperature=0,
                                        tool_choice="required", parallel_tool_calls=False,
                                        max_tokens=100) as stream:
        streamed = stream.get_final_completion().choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed] == \
        [(call.function.name, json.loads(call.function.arguments))]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"status": "active"}'}]
    final = client.chat.completions.create(model="kdgate-demo", messages=messages, tools=[LOOKUP],
                                           tool_choice="none", temperature=0, max_tokens=60)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


def test_the_responses_tool_loop_runs_through_the_gateway_on_vllm(gateway):
    """The same loop through /v1/responses: a `function_call` item (the same one streamed), then the answer to its
    `function_call_output`, the conversation sent back as the SDK's items."""
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    tool = {"type": "function", "name": "lookup_order", "description": LOOKUP["function"]["description"],
            "parameters": ORDER, "strict": True}
    conversation = list(GOLDEN[1])
    asked = dict(model="kdgate-demo", tools=[tool], tool_choice="required", parallel_tool_calls=False, temperature=0,
                 max_output_tokens=100)
    first = client.responses.create(input=conversation, **asked)
    [call] = first.output
    assert call.type == "function_call" and call.name == "lookup_order" and call.status == "completed"
    assert jsonschema_rs.validator_for(ORDER).is_valid(json.loads(call.arguments))
    with client.responses.stream(input=conversation, **asked) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_response()
    assert [(item.name, item.parsed_arguments) for item in streamed.output] == [(call.name, json.loads(call.arguments))]
    assert kinds.count("response.output_item.added") == 1 and "response.function_call_arguments.delta" in kinds
    conversation += [*first.output, {"type": "function_call_output", "call_id": call.call_id,
                                     "output": '{"status": "active"}'}]
    final = client.responses.create(model="kdgate-demo", input=conversation, tools=[tool], tool_choice="none",
                                    temperature=0, max_output_tokens=60)
    assert final.output_text and [item.type for item in final.output] == ["message"]


def test_vllm_itself_answers_a_required_call_in_the_same_shape(vllm_servers):
    """The launch flags at work: vLLM's own hermes parser and grammar, for a client that skips the gateway. vLLM
    holds the arguments to the parameters only for a `strict` tool (unset, they came out as a string of reply text);
    kdgate holds every tool's."""
    server = vllm_servers.teacher
    strict = {"type": "function", "function": LOOKUP["function"] | {"strict": True}}
    body = {"model": server.name, "messages": GOLDEN[1], "tools": [strict], "tool_choice": "required",
            "parallel_tool_calls": False, "temperature": 0, "max_tokens": 100}
    reply = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    [call] = reply.json()["choices"][0]["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "lookup_order"
    assert jsonschema_rs.validator_for(ORDER).is_valid(json.loads(call["function"]["arguments"]))
