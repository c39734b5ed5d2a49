"""`POST /v1/responses` over real HTTP (issue 27, item 4): the field table covers the `openai` package's own list of
Responses fields and agrees with the wire model, the OpenAPI document and docs/api.md; honoured fields do what the
table says, refused ones are 400s naming them; responses and event streams have OpenAI's shapes (the official
client parses them) with kdgate's route object and headers; the answer is chat's answer to the same messages, and
a mid-stream handoff joins into one answer as on chat."""

from __future__ import annotations

import json
import math
import re
import time

import httpx
import jsonschema_rs
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent, response_create_params
from pydantic import TypeAdapter, ValidationError

from gateway.chat.fields import Treatment
from gateway.chat.protocol import ChatCompletionRequest
from gateway.completions.protocol import CompletionRequest
from gateway.openapi import REF
from gateway.responses.fields import REQUEST_FIELDS
from gateway.responses.protocol import ResponseRequest
from gateway.responses.serving import ResponseEndpoint
from gateway.settings import HandoffSettings, RoutingSettings, ShadowSettings
from runtime.errors import UpstreamTimeout
from tests.conftest import ROOT, ThreadedServer, gateway_settings
from tests.gateway.test_confidence_routing import ESCALATE, KEEP, ROUTE_AT, routed_by

TICKET = "Hello, my SmartHub Pro from order 48213 will not turn on. This is urgent! Thanks, Maria"
HELD_OUT = ("Dear team, Order 35533 was a Plse Camera and order 24315 was a PhotoFrge. The Plse Camera makes a "
            "grinding noise. Last year order 11918 had the same problem. I have a Basic account. Thanks, James")
BASE = {"input": TICKET, "max_output_tokens": 24, "temperature": 0}
EVENTS = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
          "response.output_text.delta", "response.output_text.done", "response.content_part.done",
          "response.output_item.done", "response.completed"]


def fields(treatment: Treatment) -> list[str]:
    return [name for name, field in REQUEST_FIELDS.items() if field.treatment == treatment]


def post(server, body: dict, route: str | None = None) -> httpx.Response:
    headers = {"x-kdgate-force": route} if route else {}
    return httpx.post(f"{server.url}/v1/responses", json=body, headers=headers, timeout=60)


def ok(server, body: dict, route: str | None = None) -> dict:
    response = post(server, body, route)
    assert response.status_code == 200, response.text
    return response.json()


def chat_text(server, messages: list[dict], max_tokens: int, route: str | None = None, **extra) -> str:
    headers = {"x-kdgate-force": route} if route else {}
    response = httpx.post(f"{server.url}/v1/chat/completions", headers=headers, timeout=60, json={
        "messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def events(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event; the name and the data's `type` agree."""
    parsed = []
    for block in response.text.strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        parsed.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
        assert parsed[-1][0] == parsed[-1][1]["type"]
    return parsed


def output_text(body: dict) -> str:
    return body["output"][0]["content"][0]["text"]


# ------------------------------------------------------------------------------------------- the table itself


def openai_request_fields() -> set[str]:
    names = set()
    for typed_dict in (response_create_params.ResponseCreateParamsNonStreaming,
                       response_create_params.ResponseCreateParamsStreaming):
        names |= typed_dict.__required_keys__ | typed_dict.__optional_keys__
    return names


def test_the_table_classifies_every_field_of_openais_responses_request():
    """A field the `openai` package adds fails this until the table says what kdgate does with it."""
    assert set(REQUEST_FIELDS) == openai_request_fields()


def test_the_wire_model_declares_exactly_the_honoured_and_ignored_fields():
    assert set(ResponseRequest.model_fields) == set(fields(Treatment.HONOURED)) | set(fields(Treatment.IGNORED))


def test_the_openapi_document_lists_exactly_the_honoured_and_ignored_fields(gateway):
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    schema = document["components"]["schemas"]["ResponseRequest"]
    assert set(schema["properties"]) == set(fields(Treatment.HONOURED)) | set(fields(Treatment.IGNORED))
    assert schema["additionalProperties"] is False
    for name in fields(Treatment.IGNORED):
        assert schema["properties"][name]["description"].startswith("Accepted and ignored: ")
    operation = document["paths"]["/v1/responses"]["post"]
    assert all(f"`{name}`" in operation["description"] for name in fields(Treatment.REFUSED))
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ResponseRequest")


def test_each_schema_of_the_openapi_document_is_its_own_models(gateway):
    """Found by fuzzing chat: the Responses API's flat function tool and named `tool_choice` were named as chat's
    (`FunctionTool`, `NamedToolChoice`), so the document's one schema of each name gave chat the Responses shapes
    (and the fuzzer a flat `tool_choice` that chat refuses). Every request model's definitions are the document's."""
    schemas = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()["components"]["schemas"]
    for model in (ChatCompletionRequest, CompletionRequest, ResponseRequest):
        for name, definition in model.model_json_schema(ref_template=REF).get("$defs", {}).items():
            assert schemas[name] == definition, (model.__name__, name)


def test_docs_api_lists_every_field_and_what_kdgate_does_with_it():
    page = (ROOT / "docs" / "api.md").read_text()
    assert "| `POST /v1/responses` |" in page
    section = page[page.index("\n## Responses"):]
    end = section.find("\n## ", 1)  # the next section's heading
    section = section if end < 0 else section[:end]
    rows = dict(re.findall(r"^\| `(\w+)` \| OpenAI \| (honoured|ignored|refused) \|", section, flags=re.MULTILINE))
    assert rows == {name: field.treatment.value for name, field in REQUEST_FIELDS.items()}


# ------------------------------------------------------------------------------------------- refused fields

REFUSED_VALUES = {
    "access_programs": ["x"], "background": True, "background_options": {}, "context_management": [{}],
    "conversation": "conv_123", "image": {}, "moderation": {}, "previous_response_id": "resp_123",
    "prompt": {"id": "pmpt_1"}, "reasoning": {"effort": "low"}, "store": True, "truncation": "auto"}
HARMLESS_VALUES = [("background", False), ("store", False), ("truncation", "disabled")] + [
    (name, None) for name in REFUSED_VALUES]


def test_every_refused_field_has_a_test_value():
    assert set(REFUSED_VALUES) == set(fields(Treatment.REFUSED))


@pytest.mark.parametrize("name", sorted(REFUSED_VALUES))
def test_a_refused_field_is_a_400_that_names_it(gateway, name):
    response = post(gateway, BASE | {name: REFUSED_VALUES[name]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == name and error["message"].startswith(f"`{name}` is not supported: ")
    assert "drop" in error["message"]  # it says what to do


@pytest.mark.parametrize(("name", "value"), HARMLESS_VALUES, ids=lambda value: json.dumps(value))
def test_a_refused_field_that_asks_for_nothing_is_accepted(gateway, name, value):
    assert post(gateway, BASE | {"max_output_tokens": 2, name: value}).status_code == 200


REFUSED_REQUESTS = [
    ({"seed": 1}, "seed", "`seed` is not a field of the Responses API"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]", "items of type `reasoning` are not supported"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
     "input[0].content", "part 0 has type 'input_image'"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", ""),
    ({"input": ""}, "input", "the input is empty"),
    ({"input": []}, "input", "the input has no items"),  # found by fuzzing: it was answered, with no messages
    ({"include": ["file_search_call.results"]}, "include[0]", ""),
    ({"top_logprobs": 2}, "top_logprobs", "needs the logprobs included"),
    ({"max_output_tokens": 0}, "max_output_tokens", "must be at least 1"),
    ({"text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}, "text.format",
     "needs `name` and `schema`"),
    ({"text": {"verbosity": "high"}}, "text.verbosity", ""),
]


@pytest.mark.parametrize(("changes", "param", "says"), REFUSED_REQUESTS, ids=lambda value: json.dumps(value)[:40])
def test_a_request_kdgate_cannot_serve_is_refused_naming_the_field(gateway, changes, param, says):
    response = post(gateway, BASE | changes)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


SCHEMA_REFUSES = [  # found by fuzzing: the document allowed the first two, which the validators refuse
    {"input": []}, {"input": "hi", "top_logprobs": 2, "include": None},
    {"input": "hi", "tool_choice": "required"}, {"input": "hi", "tool_choice": "auto", "tools": []},
    {"input": "hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "f"},
     "text": {"format": {"type": "json_object"}}},
    # found by CI's fuzzing: `name` was required but could be null
    {"input": "hi", "text": {"format": {"type": "json_schema", "name": None, "schema": {}}}}]


@pytest.mark.parametrize("body", SCHEMA_REFUSES, ids=lambda value: json.dumps(value)[:60])
def test_the_request_schema_states_the_rules_the_validators_hold(body):
    assert not jsonschema_rs.validator_for(ResponseRequest.model_json_schema()).is_valid(body)
    with pytest.raises(ValidationError):
        ResponseRequest.model_validate(body)


# ------------------------------------------------------------------------------------------- honoured fields


def test_text_input_and_a_message_list_with_instructions_are_chats_messages(gateway):
    assert output_text(ok(gateway, BASE)) == chat_text(gateway, [{"role": "user", "content": TICKET}], 24)
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Order 48213."}]},
             {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
              "content": [{"type": "output_text", "text": "Thanks.", "annotations": []}]},
             {"role": "user", "content": TICKET}]
    body = ok(gateway, BASE | {"input": items, "instructions": "Answer with JSON."})
    assert body["instructions"] == "Answer with JSON."
    assert output_text(body) == chat_text(gateway, [
        {"role": "system", "content": "Answer with JSON."}, {"role": "user", "content": "Order 48213."},
        {"role": "assistant", "content": "Thanks."}, {"role": "user", "content": TICKET}], 24)


def test_what_the_schema_allows_is_accepted(gateway):
    """Found by fuzzing: an item's `type: null` is a message item as if left out; an empty text part beside one with
    text is accepted (the schema asks for some text in the content, not in every part)."""
    items = [{"type": None, "role": "user", "content": [{"type": "input_text", "text": ""},
                                                        {"type": "input_text", "text": TICKET}]}]
    assert output_text(ok(gateway, BASE | {"input": items})) == output_text(ok(gateway, BASE))


def test_max_output_tokens_ends_an_incomplete_response(gateway):
    body = ok(gateway, BASE | {"max_output_tokens": 3})
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 3 and body["output"][0]["status"] == "incomplete"
    whole = ok(gateway, BASE | {"max_output_tokens": 200})
    assert whole["status"] == "completed" and whole["incomplete_details"] is None


def test_temperature_and_top_p_sample(gateway):
    greedy = {output_text(ok(gateway, BASE)) for _ in range(2)}
    sampled = {output_text(ok(gateway, BASE | {"temperature": 2.0})) for _ in range(4)}
    assert len(greedy) == 1 and len(sampled) > 1
    assert output_text(ok(gateway, BASE | {"temperature": 2.0, "top_p": 1e-9})) == greedy.pop()  # one token left


def test_text_format_json_schema_gives_a_document_of_the_schema(gateway):
    schema = {"type": "object", "properties": {"order": {"type": "integer"}, "urgent": {"type": "boolean"}},
              "required": ["order", "urgent"], "additionalProperties": False}
    text_format = {"type": "json_schema", "name": "ticket", "schema": schema, "strict": True}
    body = ok(gateway, BASE | {"max_output_tokens": 60, "text": {"format": text_format}})
    document = json.loads(output_text(body))
    assert set(document) == {"order", "urgent"} and isinstance(document["order"], int)
    assert body["text"] == {"format": text_format}
    assert isinstance(json.loads(output_text(ok(gateway, BASE | {"max_output_tokens": 60, "text": {
        "format": {"type": "json_object"}}}))), dict)
    bad = post(gateway, BASE | {"text": {"format": text_format | {"schema": {"type": "string", "pattern": "("}}}})
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("text.format.schema"), bad.text


def test_included_logprobs_are_the_answer_tokens(gateway):
    body = ok(gateway, BASE | {"include": ["message.output_text.logprobs"], "top_logprobs": 2})
    part = body["output"][0]["content"][0]
    assert "".join(entry["token"] for entry in part["logprobs"]) == part["text"]
    assert all(len(entry["top_logprobs"]) == 2 and entry["logprob"] <= 0 for entry in part["logprobs"])
    assert ok(gateway, BASE)["output"][0]["content"][0]["logprobs"] == []


# ------------------------------------------------------------------------------------------- shapes and routes


def test_a_response_has_openais_shape_usage_and_route(gateway):
    response = post(gateway, BASE | {"metadata": {"team": "support"}, "user": "u1", "store": False,
                                     "max_output_tokens": 200})
    body = response.json()
    assert body["object"] == "response" and body["id"].startswith("resp_") and body["status"] == "completed"
    assert body["model"] == "kdgate-demo" and body["store"] is False and body["metadata"] == {"team": "support"}
    item = body["output"][0]
    assert item["type"] == "message" and item["id"].startswith("msg_") and item["role"] == "assistant"
    assert item["content"][0]["type"] == "output_text" and item["content"][0]["annotations"] == []
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert body["kdgate"] == {"route": "student", "reason": "policy:student_only", "model": "demo-student",
                              "student_version": "initial", "handed_off_tokens": None}
    assert (response.headers["x-kdgate-route"], response.headers["x-kdgate-route-reason"]) == (
        "student", "policy:student_only")


def test_a_stream_sends_openais_events_in_order_numbered(gateway):
    whole = ok(gateway, BASE | {"max_output_tokens": 200})
    response = post(gateway, BASE | {"stream": True, "max_output_tokens": 200})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-kdgate-route"] == "student"
    streamed = events(response)
    names = [name for name, _ in streamed]
    assert [name for index, name in enumerate(names) if index == 0 or name != names[index - 1]] == EVENTS
    assert [data["sequence_number"] for _, data in streamed] == list(range(len(streamed)))
    deltas = "".join(data["delta"] for name, data in streamed if name == "response.output_text.delta")
    completed = streamed[-1][1]["response"]
    assert deltas == output_text(completed) == streamed[-4][1]["text"] == output_text(whole)
    assert completed["status"] == "completed" and completed["usage"]["output_tokens"] > 0
    assert completed["kdgate"]["route"] == "student"
    assert streamed[0][1]["response"]["status"] == "in_progress" and streamed[0][1]["response"]["output"] == []
    for _, data in streamed:  # each event is one of the openai package's, field for field
        TypeAdapter(ResponseStreamEvent).validate_python(data)
    Response.model_validate(whole)
    cut = events(post(gateway, BASE | {"stream": True, "max_output_tokens": 3}))
    assert cut[-1][0] == "response.incomplete" and cut[-1][1]["response"]["incomplete_details"] == {
        "reason": "max_output_tokens"}


def test_a_failure_mid_stream_is_an_error_event_then_response_failed():
    """OpenAI's way of ending a stream that fails after it started: `error`, then `response.failed` carrying the
    response with its error (the numbers go on from the events already sent)."""
    stream = ResponseEndpoint(ResponseRequest.model_validate(BASE | {"stream": True}), "kdgate-demo").stream("r1", 0)
    opening = stream.opening()
    failure = stream.failure(UpstreamTimeout("the teacher went silent", backend="teacher"))
    failed = [block.strip().split("\n") for block in failure]
    assert [name for name, _ in failed] == ["event: error", "event: response.failed"]
    error, response = (TypeAdapter(ResponseStreamEvent).validate_json(data.removeprefix("data: "))
                       for _, data in failed)
    assert error.message == "the teacher went silent" and error.sequence_number == len(opening)
    assert response.response.status == "failed" and response.response.error.message == "the teacher went silent"
    assert stream.ending() == []  # no `data: [DONE]`


def test_a_forced_teacher_serves_and_says_so(gateway):
    response = post(gateway, BASE, "teacher")
    body = response.json()
    assert response.headers["x-kdgate-route"] == "teacher" and body["kdgate"]["reason"] == "forced:header"
    assert output_text(body) == chat_text(gateway, [{"role": "user", "content": TICKET}], 24, "teacher")


def test_the_openai_client_creates_and_streams_responses(gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0)
    chat = chat_text(gateway, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TICKET}], 200)
    whole = client.responses.create(model="kdgate-demo", input=TICKET, instructions="Be brief.",
                                    max_output_tokens=200, temperature=0)
    assert whole.output_text == chat and whole.status == "completed"
    assert whole.model_extra["kdgate"]["route"] == "student"
    created = list(client.responses.create(model="kdgate-demo", input=TICKET, instructions="Be brief.",
                                           max_output_tokens=200, temperature=0, stream=True))
    assert [event.type for event in created][:2] == ["response.created", "response.in_progress"]
    assert created[-1].response.output_text == chat
    with client.responses.stream(model="kdgate-demo", input=TICKET, instructions="Be brief.",
                                 max_output_tokens=200, temperature=0) as stream:
        deltas = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas == final.output_text == chat
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="kdgate-demo", input="hi", previous_response_id="resp_1")
    assert refused.value.param == "previous_response_id"


def test_the_engine_server_serves_responses_without_a_route(gateway, engine_server):
    """`kdgate engine` speaks /v1/responses with the same code: the teacher's answer, forced through the gateway
    or asked of its engine directly, is the same, and the engine names no route."""
    direct = httpx.post(f"{engine_server.base_url}/responses", json=BASE | {"model": engine_server.model},
                        timeout=60)
    assert direct.status_code == 200 and "kdgate" not in direct.json() and "x-kdgate-route" not in direct.headers
    assert output_text(direct.json()) == output_text(ok(gateway, BASE, "teacher"))


# ------------------------------------------------------------------------------------------- routing as chat's


@pytest.fixture(scope="module")
def keeping_gateway(demo_dirs, engine_server, tmp_path_factory):
    yield from routed_by(KEEP, demo_dirs, engine_server, tmp_path_factory)


@pytest.fixture(scope="module")
def escalating_gateway(demo_dirs, engine_server, tmp_path_factory):
    yield from routed_by(ESCALATE, demo_dirs, engine_server, tmp_path_factory)


@pytest.mark.parametrize("threshold", [KEEP, ESCALATE], ids=["keep", "escalate"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_confidence_policy_holds_back_and_decides_as_for_chat(request, threshold, stream):
    """Hold-back on a response: kept, the student's answer; escalated, the teacher's from the start."""
    server = request.getfixturevalue("keeping_gateway" if threshold == KEEP else "escalating_gateway")
    route, reason = ROUTE_AT[threshold]
    body = {"input": HELD_OUT, "max_output_tokens": 24, "temperature": 0}
    forced = output_text(ok(server, body, route))
    response = post(server, body | {"stream": stream})
    assert (response.headers["x-kdgate-route"], response.headers["x-kdgate-route-reason"]) == (route, reason)
    whole = events(response)[-1][1]["response"] if stream else response.json()
    assert output_text(whole) == forced and whole["kdgate"]["reason"] == reason


# ------------------------------------------------------------------------------------------- a mid-stream handoff

MIN_PROB = 0.999  # the demo student's answer to HELD_OUT falls below it some tokens in


@pytest.fixture(scope="module")
def handoff_gateway(demo_dirs, engine_server):
    from gateway.app import create_app

    routing = RoutingSettings(policy="student_only", handoff=HandoffSettings(enabled=True, min_prob=MIN_PROB))
    with ThreadedServer(create_app(gateway_settings(demo_dirs, engine_server, routing=routing))) as server:
        yield server


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_mid_stream_handoff_joins_into_one_answer(handoff_gateway, engine_server, stream):
    """The student's sure tokens, then what the teacher writes continuing them: chat's handoff, through
    /v1/responses."""
    body = {"input": HELD_OUT, "max_output_tokens": 48, "temperature": 0}
    student = ok(handoff_gateway, body | {"include": ["message.output_text.logprobs"]}, "student")
    tokens = student["output"][0]["content"][0]["logprobs"]
    cut = next(index for index, entry in enumerate(tokens) if entry["logprob"] < math.log(MIN_PROB))
    assert cut > 0
    kept = "".join(entry["token"] for entry in tokens[:cut])
    continued = httpx.post(f"{engine_server.base_url}/chat/completions", timeout=60, json={
        "model": engine_server.model, "messages": [{"role": "user", "content": HELD_OUT},
                                                   {"role": "assistant", "content": kept}],
        "max_tokens": 48 - cut, "temperature": 0, "add_generation_prompt": False,
        "continue_final_message": True}).json()["choices"][0]["message"]["content"]
    response = post(handoff_gateway, body | {"stream": stream})
    assert response.status_code == 200, response.text
    whole = events(response)[-1][1]["response"] if stream else response.json()
    assert output_text(whole) == kept + continued
    assert whole["kdgate"] == {"route": "teacher", "reason": "handoff", "model": "demo-teacher",
                               "student_version": "initial", "handed_off_tokens": cut}


# ------------------------------------------------------------------------------------------- shadow


def test_a_response_is_shadowed_as_the_chat_request_it_is(demo_dirs, engine_server, tmp_path):
    """A response's instructions and input are chat messages: its shadow record holds them and its answer, as a chat
    request's would."""
    from gateway.app import create_app

    shadow = ShadowSettings(enabled=True, sample_rate=1.0, store_url=f"sqlite:///{tmp_path}/shadow.sqlite3")
    with ThreadedServer(create_app(gateway_settings(demo_dirs, engine_server, shadow=shadow))) as server:
        body = ok(server, BASE | {"instructions": "Be brief."})
        store = server.app.state.responses.shadow.store
        deadline = time.monotonic() + 60
        while not list(store.iter_records()) and time.monotonic() < deadline:
            time.sleep(0.1)
        [record] = store.iter_records()
    assert record.kind == "shadow" and record.student_answer == output_text(body)
    assert record.prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TICKET}]
