"""Tool calling through the gateway, with the official `openai` SDK, on the demo engines (the student in-process, the
teacher behind the HTTP backend): the tool loop (call, result, answer), streamed calls put together by the SDK's own
helpers, `parse()` with a pydantic tool, the requests refused by name, and calls that stay well-formed when the
teacher takes one over mid-arguments."""

from __future__ import annotations

import json

import httpx
import jsonschema_rs
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from distill.demo.task import take
from gateway.settings import HandoffSettings, RoutingSettings
from tests.conftest import ThreadedServer, gateway_settings

ORDER = {"type": "object", "properties": {"order_number": {"type": "string", "pattern": "^[0-9]{5}$"}},
         "required": ["order_number"], "additionalProperties": False}
LOOKUP = {"type": "function", "function": {"name": "lookup_order", "description": "Find an order by its number",
                                           "parameters": ORDER}}
LOOKUP_NAMED = {"type": "function", "function": {"name": "lookup_order"}}
EAGER = 0.999  # hands off at nearly every token the student is not sure of


@pytest.fixture
def client(gateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0)


@pytest.fixture(scope="module")
def eager_gateway(demo_dirs, engine_server):
    from gateway.app import create_app

    routing = RoutingSettings(policy="student_only", handoff=HandoffSettings(enabled=True, min_prob=EAGER))
    with ThreadedServer(create_app(gateway_settings(demo_dirs, engine_server, routing=routing))) as server:
        yield server


def test_the_sdks_tool_loop_runs_through(client):
    """Call, the tool's result in a `tool` message after the assistant's `tool_calls`, then the final answer."""
    ticket = take("test", 1, seed=3)[0]
    messages = ticket.messages()
    first = client.chat.completions.create(model="kdgate-demo", messages=messages, tools=[LOOKUP],
                                           tool_choice="required", parallel_tool_calls=False, temperature=0,
                                           max_tokens=100)
    [call] = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "lookup_order"
    number = json.loads(call.function.arguments)["order_number"]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"order_number": number,
                                                                                  "status": "active"})}]
    final = client.chat.completions.create(model="kdgate-demo", messages=messages, tools=[LOOKUP],
                                           tool_choice="none", temperature=0, max_tokens=60)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls  # vLLM sends [], OpenAI null


def test_a_streamed_call_put_together_by_the_sdk_is_the_non_streamed_one(client):
    ticket = take("test", 1, seed=4)[0]
    asked = dict(model="kdgate-demo", messages=ticket.messages(), tools=[LOOKUP], temperature=0, max_tokens=80,
                 tool_choice={"type": "function", "function": {"name": "lookup_order"}})
    whole = client.chat.completions.create(**asked, extra_headers={"x-kdgate-force": "student"})
    with client.chat.completions.stream(**asked, extra_headers={"x-kdgate-force": "student"}) as stream:
        done = [event for event in stream if event.type == "tool_calls.function.arguments.done"]
        streamed = stream.get_final_completion()
    [expected], [got] = whole.choices[0].message.tool_calls, streamed.choices[0].message.tool_calls
    assert got.function.name == expected.function.name == "lookup_order" and got.id.startswith("call_")
    assert json.loads(got.function.arguments) == json.loads(expected.function.arguments)
    assert [event.name for event in done] == ["lookup_order"]
    assert whole.choices[0].finish_reason == streamed.choices[0].finish_reason == "stop"  # a named function's call


class LookupOrder(BaseModel):
    order_number: str = Field(pattern=r"^[0-9]{5}$")


def test_parse_gives_the_arguments_as_the_pydantic_model(client):
    tool = openai.pydantic_function_tool(LookupOrder, name="lookup_order")
    completion = client.chat.completions.parse(model="kdgate-demo", messages=take("test", 1, seed=5)[0].messages(),
                                               tools=[tool], tool_choice="required", temperature=0, max_tokens=80)
    [call] = completion.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, LookupOrder)


REFUSED = [
    ({"tool_choice": "required"}, "tool_choice", "needs `tools`"),
    ({"tools": [LOOKUP], "tool_choice": {"type": "function", "function": {"name": "refund"}}}, "tool_choice",
     "which `tools` does not have"),
    ({"tools": [LOOKUP, LOOKUP]}, "tools", "twice"),
    ({"tools": [{"type": "custom", "custom": {"name": "sql"}}]}, "tools", "are not supported"),
    ({"tools": [LOOKUP], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format",
     "the answer is a tool call"),
    ({"tools": [{"type": "function", "function": {"name": "refund", "parameters": {
        "type": "object", "properties": {"amount": {"type": "number", "minimum": 0}}}}}], "tool_choice": "required"},
     "tools[0].function.parameters.properties.amount.minimum", "cannot enforce"),
    ({"tools": [{"type": "function", "function": {"name": "look up"}}]}, "tools", "pattern"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}]}, "messages",
     "needs `tool_call_id`"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}, "messages",
     "must be JSON text"),
    # a result for a call nobody made (a typo in the id, a lost assistant turn): OpenAI refuses it too
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "{}"}]}, "messages[2].tool_call_id",
     "answers no earlier call (the calls before it are `c1`)"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "c1", "content": "{}"}]},
     "messages[1].tool_call_id", "no call comes before it"),
]


@pytest.mark.parametrize(("changes", "param", "says"), REFUSED, ids=lambda value: json.dumps(value)[:60])
def test_a_tool_request_kdgate_cannot_honour_is_a_400_naming_the_field(gateway, changes, param, says):
    body = {"messages": [{"role": "user", "content": "Where is order 12345?"}], "max_tokens": 40} | changes
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith(param) and says in error["message"], error


def test_a_call_the_teacher_takes_over_mid_arguments_is_one_well_formed_call(eager_gateway):
    """Under `auto` and `required`, streamed: each answer's call parses and its arguments are a document of the
    parameters, whoever wrote which of its tokens."""
    validator = jsonschema_rs.validator_for(ORDER)
    handed = []
    for index, ticket in enumerate(take("test", 12, seed=7)):
        choice = "required" if index % 2 else "auto"
        sampled = {"temperature": 1.0, "seed": index} if index % 3 else {"temperature": 0}
        body = {"messages": ticket.messages(), "max_tokens": 100, "tools": [LOOKUP], "tool_choice": choice,
                "stream": True} | sampled
        with httpx.stream("POST", f"{eager_gateway.url}/v1/chat/completions", json=body, timeout=120) as response:
            assert response.status_code == 200, response.read()
            chunks = [json.loads(line[6:]) for line in response.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
        deltas = [call for chunk in chunks if chunk["choices"] for call in chunk["choices"][0]["delta"].get(
            "tool_calls") or []]
        route = next(chunk["kdgate"] for chunk in reversed(chunks) if "kdgate" in chunk)
        if choice == "required" or deltas:
            assert [delta["function"]["name"] for delta in deltas if "name" in delta["function"]] == ["lookup_order"]
            arguments = "".join(delta["function"].get("arguments", "") for delta in deltas)
            assert validator.is_valid(json.loads(arguments)), arguments
            handed.append(route.get("handed_off_tokens"))
    assert sum(tokens is not None for tokens in handed) >= 4, handed


def test_free_form_tools_that_compile_slowly_are_answered_within_the_budget_not_hung(gateway):
    """Several tools with free-form parameters (`{}`: any JSON) under `auto` took 40 s and more to compile, past a
    client's timeout (schemathesis found it): the request is answered within the gateway's compile budget, with
    the answer or a 400 that says to retry."""
    import time

    from gateway.serving import COMPILE_BUDGET_S

    tools = [{"type": "function", "function": {"name": f"free_{index}", "parameters": {}}} for index in range(5)]
    body = {"messages": [{"role": "user", "content": "Where is order 12345?"}], "max_tokens": 8, "tools": tools}
    started = time.monotonic()
    first = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=120)
    assert time.monotonic() - started < COMPILE_BUDGET_S + 5
    if first.status_code == 400:
        assert first.json()["error"]["param"] == "tools" and "retry shortly" in first.json()["error"]["message"]
    else:
        assert first.status_code == 200, first.text
