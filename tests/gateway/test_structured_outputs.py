"""Structured outputs through routing, on the demo engines (the student in-process, the teacher behind the HTTP
backend): a constrained answer is a document of its schema whoever writes it, and still one after the teacher takes
over mid-stream (the teacher gets the grammar of the rest, not the whole grammar again: it wrote a second object
before). The official client's `parse()` works end to end."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema_rs
import pytest
from openai import OpenAI
from pydantic import BaseModel

from distill.demo.task import ANSWER_SCHEMA, take
from gateway.handoff import continuation
from gateway.settings import HandoffSettings, RoutingSettings
from runtime.constraints.languages import constraint
from runtime.contract import GenerationRequest, SamplingParams
from tests.conftest import ThreadedServer, gateway_settings

TRIAGE = {"type": "json_schema", "json_schema": {"name": "triage", "schema": ANSWER_SCHEMA, "strict": True}}
EAGER = 0.999  # hands off at nearly every token the student is not sure of: many handoffs per answer set


@pytest.fixture(scope="module")
def eager_gateway(demo_dirs, engine_server):
    from gateway.app import create_app

    routing = RoutingSettings(policy="student_only", handoff=HandoffSettings(enabled=True, min_prob=EAGER))
    with ThreadedServer(create_app(gateway_settings(demo_dirs, engine_server, routing=routing))) as server:
        yield server


def stream(server, body: dict) -> tuple[str, dict]:
    """The streamed answer's text and its final `kdgate` object."""
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body | {"stream": True},
                      timeout=120) as response:
        assert response.status_code == 200, response.read()
        chunks = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    return text, next(chunk["kdgate"] for chunk in reversed(chunks) if "kdgate" in chunk)


def test_the_teachers_continuation_is_constrained_by_the_rest_of_the_document():
    language = constraint({"json": ANSWER_SCHEMA})
    request = GenerationRequest("r", ({"role": "user", "content": "x"},), SamplingParams(max_tokens=90),
                                structured_outputs=language.structured_outputs, constraint=language)
    continued = continuation(request, '{"queue": "billing", "priority": "P', 9)
    assert continued.structured_outputs == language.after('{"queue": "billing", "priority": "P')
    assert continued.structured_outputs != language.structured_outputs
    assert continuation(request, "", 0).structured_outputs == language.structured_outputs  # nothing sent yet


def test_constrained_answers_stay_documents_of_the_schema_through_handoffs(eager_gateway):
    validator = jsonschema_rs.validator_for(ANSWER_SCHEMA)
    reasons = []
    for index, ticket in enumerate(take("test", 16, seed=5)):
        sampled = {"temperature": 1.0, "seed": index} if index % 2 else {"temperature": 0}
        text, route = stream(eager_gateway, {"messages": ticket.messages(), "max_tokens": 120,
                                             "response_format": TRIAGE} | sampled)
        assert validator.is_valid(json.loads(text)), text
        reasons.append(route["reason"])
    assert reasons.count("handoff") >= 8, reasons


@pytest.mark.parametrize("route", ["student", "teacher"])
def test_every_route_answers_a_document(gateway, route):
    ticket = take("test", 1, seed=9)[0]
    body = {"messages": ticket.messages(), "max_tokens": 120, "temperature": 0, "response_format": TRIAGE}
    answer = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers={"x-kdgate-force": route},
                        timeout=120).json()
    assert jsonschema_rs.validator_for(ANSWER_SCHEMA).is_valid(json.loads(answer["choices"][0]["message"]["content"]))


def test_an_answer_under_a_clients_own_grammar_is_never_handed_over_mid_stream(eager_gateway):
    """No grammar of its rest can be derived: the student that started it finishes it."""
    grammar = 'root ::= "order " [0-9] [0-9] [0-9] [0-9] [0-9] " " ("billing" | "repairs" | "returns")'
    for index, ticket in enumerate(take("test", 4, seed=6)):
        text, route = stream(eager_gateway, {"messages": ticket.messages(), "max_tokens": 40, "temperature": 1.0,
                                             "seed": index, "structured_outputs": {"grammar": grammar}})
        assert route["reason"] != "handoff"
        assert text.startswith("order ") and text.split()[-1] in ("billing", "repairs", "returns")


class Triage(BaseModel):
    queue: Literal["repairs", "tech-support", "billing", "subscriptions", "accounts", "logistics", "returns"]
    priority: Literal["P1", "P2", "P3", "P4"]
    reply: str


def test_the_official_clients_parse_gives_the_model(eager_gateway):
    client = OpenAI(base_url=f"{eager_gateway.url}/v1", api_key="unused", max_retries=0)
    ticket = take("test", 1, seed=11)[0]
    completion = client.chat.completions.parse(model="kdgate-demo", messages=ticket.messages(), temperature=0,
                                               max_tokens=120, response_format=Triage)
    message = completion.choices[0].message
    assert isinstance(message.parsed, Triage) and message.parsed == Triage.model_validate_json(message.content)


@pytest.mark.parametrize(("schema", "parameter"), [
    ({"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}},
     "response_format.json_schema.schema.properties.age.minimum"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "ipv4"}}}, "response_format.json_schema.schema"),
])
def test_a_schema_the_grammar_cannot_enforce_is_a_400_naming_its_place(gateway, schema, parameter):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == parameter


@pytest.mark.parametrize(("changes", "parameter"), [
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs"),
    ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs.structural_tag"),
    ({"structured_outputs": {"json_object": True, "disable_additional_properties": True}},
     "structured_outputs.disable_additional_properties"),
])
def test_a_malformed_constraint_is_a_400_naming_it(gateway, changes, parameter):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8} | changes
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == parameter, response.json()
