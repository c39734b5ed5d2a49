"""Tools in the Responses API, with the official `openai` SDK on the demo engines (the student in-process, the
teacher behind the HTTP backend): the tool loop (a `function_call` item, its `function_call_output` sent back, the
answer), a streamed call put together by the SDK's helpers equal to the non-streamed one, the request's tool
settings echoed, the requests refused by name; and the event stream of an answer with text and calls, whose events
the SDK's own accumulator turns into the response the whole answer gives.

The demo models were not trained to call tools: calls are forced with `required` or a named function."""

from __future__ import annotations

import json
import time

import jsonschema_rs
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai import OpenAI
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from distill.demo.task import take
from gateway.responses.protocol import ResponseRequest
from gateway.responses.serving import ResponseEndpoint
from runtime.contract import Delta, Finish, TokenLogprob
from tests.gateway.test_responses import events, post

ORDER = {"type": "object", "properties": {"order_number": {"type": "string", "pattern": "^[0-9]{5}$"}},
         "required": ["order_number"], "additionalProperties": False}
LOOKUP = {"type": "function", "name": "lookup_order", "description": "Find an order by its number",
          "parameters": ORDER, "strict": True}
PING = {"type": "function", "name": "ping", "description": None, "parameters": None, "strict": None}
NAMED = {"type": "function", "name": "lookup_order"}
EVENT = TypeAdapter(ResponseStreamEvent)


@pytest.fixture
def client(gateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0)


def calls(response: Response) -> list[tuple[str, dict]]:
    return [(item.name, json.loads(item.arguments)) for item in response.output if item.type == "function_call"]


def test_the_sdks_tool_loop_runs_through(client):
    """A call, the function's output sent back after the answer's own items, then the final answer."""
    conversation = take("test", 1, seed=3)[0].messages()
    first = client.responses.create(model="kdgate-demo", input=conversation, tools=[LOOKUP], tool_choice="required",
                                    parallel_tool_calls=False, temperature=0, max_output_tokens=100)
    [call] = first.output  # `required` leaves no room for text: no message item
    assert call.type == "function_call" and call.name == "lookup_order" and call.status == "completed"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_") and first.status == "completed"
    number = json.loads(call.arguments)["order_number"]
    assert jsonschema_rs.validator_for(ORDER).is_valid(json.loads(call.arguments))
    conversation += [*first.output, {"type": "function_call_output", "call_id": call.call_id,
                                     "output": json.dumps({"order_number": number, "status": "active"})}]
    final = client.responses.create(model="kdgate-demo", input=conversation, tools=[LOOKUP], tool_choice="none",
                                    temperature=0, max_output_tokens=60)
    assert final.output_text and [item.type for item in final.output] == ["message"]


def test_a_streamed_call_put_together_by_the_sdk_is_the_non_streamed_one(client):
    asked = dict(model="kdgate-demo", input=take("test", 1, seed=4)[0].messages(), tools=[LOOKUP, PING],
                 tool_choice=NAMED, temperature=0, max_output_tokens=80, extra_headers={"x-kdgate-force": "student"})
    whole = client.responses.create(**asked)
    with client.responses.stream(**asked) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_response()
    created = list(client.responses.create(**asked, stream=True))
    assert calls(streamed) == calls(whole) == calls(created[-1].response) and calls(whole)[0][0] == "lookup_order"
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert "response.function_call_arguments.delta" in kinds and "response.output_text.delta" not in kinds
    [item] = streamed.output
    assert item.parsed_arguments == json.loads(item.arguments)  # a strict tool: the SDK parses its arguments


def test_a_stream_sends_each_calls_events_in_order(gateway):
    body = {"input": take("test", 1, seed=5)[0].text, "tools": [LOOKUP], "tool_choice": "required",
            "parallel_tool_calls": False, "max_output_tokens": 100, "temperature": 0, "stream": True}
    streamed = events(post(gateway, body))
    names = [name for name, _ in streamed]
    assert [name for index, name in enumerate(names) if index == 0 or name != names[index - 1]] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [data["sequence_number"] for _, data in streamed] == list(range(len(streamed)))
    for _, data in streamed:
        EVENT.validate_python(data)
    added, done = streamed[2][1], streamed[-2][1]
    assert added["item"]["arguments"] == "" and added["item"]["status"] == "in_progress"
    deltas = [data for name, data in streamed if name == "response.function_call_arguments.delta"]
    assert {(data["item_id"], data["output_index"]) for data in deltas} == {(added["item"]["id"], 0)}
    arguments = "".join(data["delta"] for data in deltas)
    assert streamed[-3][1]["arguments"] == arguments == done["item"]["arguments"]
    assert done["item"] | {"arguments": "", "status": "in_progress"} == added["item"]
    assert streamed[-1][1]["response"]["output"] == [done["item"]] and done["item"]["status"] == "completed"


def test_the_request_s_tool_settings_are_echoed(gateway):
    body = ok_json(gateway, {"input": "Where is order 48213?", "max_output_tokens": 60, "temperature": 0,
                             "tools": [LOOKUP, PING], "tool_choice": NAMED, "parallel_tool_calls": False,
                             "max_tool_calls": 1})
    assert (body["tools"], body["tool_choice"], body["parallel_tool_calls"], body["max_tool_calls"]) == (
        [LOOKUP, PING], NAMED, False, 1)
    Response.model_validate(body)
    plain = ok_json(gateway, {"input": "Hello", "max_output_tokens": 2})
    assert (plain["tools"], plain["tool_choice"], plain["parallel_tool_calls"], plain["max_tool_calls"]) == (
        [], "auto", True, None)


def test_max_tool_calls_bounds_the_calls_and_a_bound_too_big_is_a_400_saying_how_far_to_lower_it(gateway):
    body = {"input": "Where is order 48213?", "max_output_tokens": 60, "tools": [LOOKUP], "tool_choice": "required"}
    assert len(ok_json(gateway, body | {"max_tool_calls": 3})["output"]) in (1, 2, 3)
    response = post(gateway, body | {"max_tool_calls": 10_000})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "max_tool_calls" and "lower it to at most" in error["message"]


def ok_json(gateway, body: dict) -> dict:
    response = post(gateway, body)
    assert response.status_code == 200, response.text
    return response.json()


REFUSED = [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "tools of type 'web_search' are not supported"),
    ({"tools": [LOOKUP, {"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[1].type", "runs no tools"),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://x"}]}, "tools[0].type", "'mcp'"),
    ({"tools": [{"type": "custom", "name": "sql"}]}, "tools[0].type", "'custom'"),
    ({"tools": [{"type": "function", "function": {"name": "lookup_order"}}]}, "tools[0]", "are flat"),
    ({"tools": [{"type": "function", "name": "look up"}]}, "tools[0].name", "pattern"),
    ({"tools": [LOOKUP | {"defer_loading": True}]}, "tools[0].defer_loading", "remove it"),
    ({"tools": [LOOKUP, LOOKUP]}, "tools", "twice"),
    ({"tools": [{"type": "function", "name": "refund", "parameters": {
        "type": "object", "properties": {"amount": {"type": "number", "minimum": 0}}}}], "tool_choice": "required"},
     "tools[0].parameters.properties.amount.minimum", "cannot enforce"),
    ({"tool_choice": "required"}, "tool_choice", "needs `tools`"),
    ({"tools": [LOOKUP], "tool_choice": {"type": "function", "name": "refund"}}, "tool_choice",
     "which `tools` does not have"),
    ({"tools": [LOOKUP], "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [NAMED]}},
     "tool_choice.type", "'allowed_tools' is not supported"),
    ({"tools": [LOOKUP], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type", "not supported"),
    ({"tools": [LOOKUP], "tool_choice": {"type": "mcp", "server_label": "x"}}, "tool_choice.type", "not supported"),
    ({"tools": [LOOKUP], "tool_choice": "required", "text": {"format": {"type": "json_object"}}}, "text.format",
     "the answer is a tool call"),
    ({"tools": [LOOKUP], "max_tool_calls": 0}, "max_tool_calls", "greater than or equal to 1"),
    ({"input": [{"type": "function_call", "call_id": "c1", "name": "lookup_order", "arguments": "{not json"}]},
     "input[0].arguments", "must be JSON text"),
    ({"input": [{"type": "function_call", "name": "lookup_order", "arguments": "{}"}]}, "input[0].call_id",
     "is required"),
    ({"input": [{"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_image"}]}]},
     "input[0].output", "as a string"),
    ({"input": [{"type": "custom_tool_call", "call_id": "c1", "name": "sql", "input": "x"}]}, "input[0]",
     "items of type `custom_tool_call` are not supported"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", ""),
    ({"input": [{"type": "function_call", "call_id": "c1", "name": "lookup_order", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c9", "output": "{}"}]}, "input[1].call_id",
     "answers no earlier call (the calls before it are `c1`)"),
    ({"input": [{"type": "function_call_output", "call_id": "c1", "output": "{}"}]}, "input[0].call_id",
     "no call comes before it"),
]


@pytest.mark.parametrize(("changes", "param", "says"), REFUSED, ids=lambda value: json.dumps(value)[:60])
def test_a_tool_request_kdgate_cannot_honour_is_a_400_naming_the_field(gateway, changes, param, says):
    response = post(gateway, {"input": "Where is order 12345?", "max_output_tokens": 40} | changes)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_the_sdk_raises_the_refusal_with_its_field(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="kdgate-demo", input="hi", tools=[{"type": "web_search"}])
    assert refused.value.param == "tools[0].type"


def test_a_call_is_shadowed_with_its_tools_and_its_bound(demo_dirs, engine_server, tmp_path):
    """A response's calls are recorded as a chat request's: the tools as the template saw them, the choice, and the
    bound on the calls, which the shadow worker compiles again into the language the student answered in."""
    from gateway.app import create_app
    from gateway.settings import ShadowSettings
    from gateway.shadow.worker import compiled
    from tests.conftest import ThreadedServer, gateway_settings

    shadow = ShadowSettings(enabled=True, sample_rate=1.0, store_url=f"sqlite:///{tmp_path}/shadow.sqlite3")
    with ThreadedServer(create_app(gateway_settings(demo_dirs, engine_server, shadow=shadow))) as server:
        body = ok_json(server, {"input": take("test", 1, seed=9)[0].text, "tools": [LOOKUP, PING],
                                "tool_choice": "required", "max_tool_calls": 2, "max_output_tokens": 100,
                                "temperature": 0})
        store = server.app.state.responses.shadow.store
        deadline = time.monotonic() + 60
        while not list(store.iter_records()) and time.monotonic() < deadline:
            time.sleep(0.1)
        [record] = store.iter_records()
    assert record.constraint["tools"] == [{"type": "function", "function": {
        key: value for key, value in tool.items() if key != "type" and value is not None}} for tool in (LOOKUP, PING)]
    assert (record.constraint["tool_choice"], record.constraint["max_tool_calls"]) == ("required", 2)
    assert record.student_answer.startswith("<tool_call>") and compiled(record.constraint).accepts(
        record.student_answer)
    assert [item["type"] for item in body["output"]] == ["function_call"] * len(body["output"])


# ------------------------------------------------------------------------------------------- the event stream

CALL = '<tool_call>\n{"name": "lookup_order", "arguments": {"order_number": "48213"}}\n</tool_call>'
ANSWER = "Let me look that up. " + CALL + "\n" + CALL.replace("48213", "11918")


def endpoint(**fields) -> ResponseEndpoint:
    body = {"input": "Where are orders 48213 and 11918?", "tools": [LOOKUP], "stream": True} | fields
    return ResponseEndpoint(ResponseRequest.model_validate(body), "kdgate-demo")


def deltas(text: str, cuts: list[int]) -> list[Delta]:
    """`text` as the deltas of a stream, cut at `cuts`, each character one token with a logprob of its own."""
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [Delta(text[start:end], tuple(TokenLogprob(char, -0.5) for char in text[start:end]))
            for start, end in zip(bounds, bounds[1:], strict=False) if end > start]


def stream_of(endpoint: ResponseEndpoint, pieces: list[Delta], finish: Finish) -> list[dict]:
    stream = endpoint.stream("r1", 0)
    frames = stream.opening() + [stream.delta(delta) for delta in pieces] + stream.closing(finish, None)
    blocks = "".join(frames).strip().split("\n\n")
    return [json.loads(block.split("\n")[1].removeprefix("data: ")) for block in blocks]


def without_call_ids(response: dict) -> dict:
    return response | {"output": [item | {"call_id": ""} if item["type"] == "function_call" else item
                                  for item in response["output"]]}


def test_text_then_two_calls_stream_as_three_items():
    finish = Finish("stop", prompt_tokens=10, completion_tokens=len(ANSWER))
    streamed = stream_of(endpoint(), deltas(ANSWER, [5, 30, 90, 150]), finish)
    kinds = [(data["type"], data.get("output_index")) for data in streamed]
    squeezed = [kind for index, kind in enumerate(kinds) if index == 0 or kind != kinds[index - 1]]
    assert squeezed == [
        ("response.created", None), ("response.in_progress", None),
        ("response.output_item.added", 0), ("response.content_part.added", 0), ("response.output_text.delta", 0),
        ("response.output_text.done", 0), ("response.content_part.done", 0), ("response.output_item.done", 0),
        ("response.output_item.added", 1), ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.done", 1), ("response.output_item.done", 1),
        ("response.output_item.added", 2), ("response.function_call_arguments.delta", 2),
        ("response.function_call_arguments.done", 2), ("response.output_item.done", 2),
        ("response.completed", None)]
    final = streamed[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["message", "function_call", "function_call"]
    assert final["output"][0]["content"][0]["text"] == "Let me look that up. "
    assert [json.loads(item["arguments"]) for item in final["output"][1:]] == [
        {"order_number": "48213"}, {"order_number": "11918"}]


@given(cuts=st.lists(st.integers(min_value=1, max_value=len(ANSWER) - 1), max_size=12),
       logprobs=st.booleans(), cut_short=st.integers(min_value=0, max_value=len(ANSWER) - 1))
def test_a_stream_is_the_sdks_and_the_whole_answers_response(cuts, logprobs, cut_short):
    """However the answer comes in pieces (and wherever `max_output_tokens` cuts it): every event is one of the
    `openai` package's, the SDK's own accumulator makes of them the response the last event carries, and an answer
    whose calls are whole gives the response the whole answer gives (call ids aside: each stream makes its own)."""
    text = ANSWER if cut_short == 0 else ANSWER[:cut_short]
    fields = {"include": ["message.output_text.logprobs"], "top_logprobs": 0} if logprobs else {}
    finish = Finish("stop" if cut_short == 0 else "length", prompt_tokens=10, completion_tokens=len(text))
    streamed = stream_of(endpoint(**fields), deltas(text, [cut for cut in cuts if cut < len(text)]), finish)
    state = ResponseStreamState(input_tools=[LOOKUP], text_format=openai.omit)
    handled = [event for data in streamed for event in state.handle_event(EVENT.validate_python(data))]
    last = streamed[-1]["response"]
    if cut_short == 0:
        assert handled[-1].type == "response.completed"
        final = handled[-1].response.model_dump(mode="json", exclude_none=True)
        for item in final["output"][1:]:  # the SDK parses a strict tool's arguments
            assert item.pop("parsed_arguments") == json.loads(item["arguments"])
        assert final == Response.model_validate(last).model_dump(mode="json", exclude_none=True)
        whole = endpoint(**fields).response("r1", text, [entry for delta in deltas(text, []) for entry in
                                                          delta.logprobs], finish, None)
        assert without_call_ids(last) == without_call_ids(whole.model_dump(mode="json") | {
            "created_at": last["created_at"]})
    else:
        assert last["status"] == "incomplete"
    message = [item for item in last["output"] if item["type"] == "message"]
    for item in message:  # the text's logprobs are its own tokens'
        part = item["content"][0]
        assert "".join(entry["token"] for entry in part["logprobs"]) == (part["text"] if logprobs else "")


def test_without_tools_the_stream_is_the_same_as_before():
    """The message opens before the first token and the text deltas take the template (no tools, no logprobs)."""
    plain = ResponseEndpoint(ResponseRequest.model_validate({"input": "hi", "stream": True}), "kdgate-demo")
    streamed = stream_of(plain, deltas("Hello there", [5]), Finish("stop", 3, 11))
    assert [data["type"] for data in streamed] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert streamed[-1]["response"]["output"][0]["content"][0]["text"] == "Hello there"
