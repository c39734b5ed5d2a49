"""`POST /v1/completions` over real HTTP (issue 26, item 5): the field table covers the `openai` package's own list
of completions fields and the wire model, the OpenAPI document and docs/api.md agree with it; each honoured field
does what the table says on both routes (the local student, and the teacher behind the HTTP backend, which posts
to the engine server's own /v1/completions), refused ones are 400s naming them; responses and streams have OpenAI's
`text_completion` shapes with kdgate's route object and headers; the `openai` client works; routing (forced, hold-back,
mid-stream handoff) is chat's; shadow work is skipped and counted."""

from __future__ import annotations

import json
import math
import re
import time

import httpx
import openai
import pytest
from openai.types import completion_create_params
from prometheus_client.parser import text_string_to_metric_families

from gateway.chat.fields import Treatment
from gateway.completions.fields import REQUEST_FIELDS
from gateway.completions.protocol import CompletionRequest
from gateway.settings import HandoffSettings, RoutingSettings, ShadowSettings
from tests.conftest import ROOT, ThreadedServer, gateway_settings
from tests.gateway.test_confidence_routing import ESCALATE, KEEP, ROUTE_AT, routed_by

ROUTES = ["student", "teacher"]  # the local engine, and an engine server behind the HTTP backend


def chat_prompt(text: str) -> str:
    """The demo models' chat template rendered for one user message: the prompt they were trained to answer."""
    return f"<|bos|><|user|>{text}<|end|><|assistant|>"


REPETITIVE = "The the the the"  # the demo models are unsure of it: penalties and sampling change their answers
TICKET = "Hello, my SmartHub Pro from order 48213 will not turn on. This is urgent! Thanks, Maria"
BASE = {"prompt": chat_prompt(REPETITIVE), "max_tokens": 12, "temperature": 0}


def fields(treatment: Treatment) -> list[str]:
    return [name for name, field in REQUEST_FIELDS.items() if field.treatment == treatment]


def post(server, body: dict, route: str | None = None) -> httpx.Response:
    headers = {"x-kdgate-force": route} if route else {}
    return httpx.post(f"{server.url}/v1/completions", json=body, headers=headers, timeout=60)


def sse(response: httpx.Response) -> list[dict]:
    payloads = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    return [json.loads(payload) for payload in payloads[:-1]]


def streamed_text(chunks: list[dict]) -> str:
    return "".join(chunk["choices"][0]["text"] for chunk in chunks if chunk["choices"])


class Asker:
    """`ask(changes)`: the completion of BASE with `changes` on one route (a 200, or the test fails)."""

    def __init__(self, server, route: str | None):
        self.server, self.route = server, route

    def response(self, changes: dict | None = None, base: dict = BASE) -> httpx.Response:
        response = post(self.server, base | (changes or {}), self.route)
        assert response.status_code == 200, response.text
        return response

    def __call__(self, changes: dict | None = None, base: dict = BASE) -> dict:
        return self.response(changes, base).json()

    def text(self, changes: dict | None = None, base: dict = BASE) -> str:
        return self(changes, base)["choices"][0]["text"]

    def token_ids(self, changes: dict | None = None, base: dict = BASE) -> list[int]:
        body = self((changes or {}) | {"logprobs": 0, "return_tokens_as_token_ids": True}, base)
        return [int(token.removeprefix("token_id:")) for token in body["choices"][0]["logprobs"]["tokens"]]


# ------------------------------------------------------------------------------------------- the table itself


def openai_request_fields() -> set[str]:
    names = set()
    for typed_dict in (completion_create_params.CompletionCreateParamsNonStreaming,
                       completion_create_params.CompletionCreateParamsStreaming):
        names |= typed_dict.__required_keys__ | typed_dict.__optional_keys__
    return names


def test_the_table_classifies_every_field_of_openais_completions_request():
    """A field the `openai` package adds fails this until the table says what kdgate does with it."""
    ours = {name for name, field in REQUEST_FIELDS.items() if field.origin == "openai"}
    assert openai_request_fields() - ours == set(), "classify these new OpenAI fields in gateway/completions/fields.py"
    assert ours - openai_request_fields() == set(), "these are not OpenAI's fields: mark their origin"
    origins = [field.origin for field in REQUEST_FIELDS.values()]
    assert origins == sorted(origins, key=["openai", "vllm"].index)  # OpenAI's fields first, then vLLM's


def test_the_wire_model_declares_exactly_the_honoured_and_ignored_fields():
    assert set(CompletionRequest.model_fields) == set(fields(Treatment.HONOURED)) | set(fields(Treatment.IGNORED))


def test_the_openapi_document_lists_exactly_the_honoured_and_ignored_fields(gateway):
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    schema = document["components"]["schemas"]["CompletionRequest"]
    assert set(schema["properties"]) == set(fields(Treatment.HONOURED)) | set(fields(Treatment.IGNORED))
    assert schema["additionalProperties"] is False
    for name in fields(Treatment.IGNORED):
        assert schema["properties"][name]["description"].startswith("Accepted and ignored: ")
    operation = document["paths"]["/v1/completions"]["post"]
    assert all(f"`{name}`" in operation["description"] for name in fields(Treatment.REFUSED))
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CompletionRequest")


def test_docs_api_lists_every_field_and_what_kdgate_does_with_it():
    page = (ROOT / "docs" / "api.md").read_text()
    section = page[page.index("\n## Completions"):]
    rows = dict(re.findall(r"^\| `(\w+)` \| (?:OpenAI|vLLM) \| (honoured|ignored|refused) \|", section,
                           flags=re.MULTILINE))
    assert rows == {name: field.treatment.value for name, field in REQUEST_FIELDS.items()}


# ------------------------------------------------------------------------------------------- refused fields

REFUSED_VALUES = {"best_of": 2, "suffix": " and that is all.", "prompt_logprobs": 1, "return_token_ids": True}
HARMLESS_VALUES = [("best_of", 1), ("suffix", ""), ("return_token_ids", False)] + [
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
    assert post(gateway, BASE | {name: value}, "student").status_code == 200


def test_an_unknown_field_is_a_400_that_names_it(gateway):
    response = post(gateway, BASE | {"min_tokens": 4, "messages": []})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages" and "`messages`, `min_tokens` are not fields of the completions API" in (
        error["message"])


REFUSED_REQUESTS = [
    ({"prompt": [101, 102, 103]}, "prompt", "token ids are not supported"),
    ({"prompt": [[101, 102], [103]]}, "prompt", "token ids are not supported"),
    ({"prompt": ["one", "two"]}, "prompt", "one request per prompt"),
    ({"prompt": ""}, "prompt", "empty"),
    ({"echo": True, "logprobs": 1}, "echo", "`echo` with `logprobs` is not supported"),
    ({"n": 2}, "n", "only n=1"),
    ({"logprobs": 21}, "logprobs", "KDGATE_MAX_TOP_LOGPROBS"),
    ({"max_tokens": 0}, "max_tokens", "at least 1"),
    ({"max_tokens": 5000}, "max_tokens", "KDGATE_MAX_TOKENS_LIMIT"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "stream: true"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"logit_bias": {"the": 1}}, "logit_bias", "token ids"),
    ({"model": "gpt-3.5-turbo-instruct"}, "model", "does not exist"),
]


@pytest.mark.parametrize(("changes", "param", "says"), REFUSED_REQUESTS, ids=lambda value: json.dumps(value))
def test_a_request_kdgate_cannot_serve_is_refused_naming_the_field(gateway, changes, param, says):
    response = post(gateway, BASE | changes)
    assert response.status_code == (404 if "model" in changes else 400), response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"]


def test_a_list_of_one_prompt_is_that_prompt(gateway):
    assert Asker(gateway, "student").text({"prompt": [BASE["prompt"]]}) == Asker(gateway, "student").text()


# ------------------------------------------------------------------------------------------- honoured fields
# One probe per honoured field: it asserts what the field does, against one route's answers.


def probe_model(ask: Asker) -> None:
    assert ask({"model": "kdgate-demo"})["model"] == "kdgate-demo"


def probe_prompt(ask: Asker) -> None:
    """A raw prompt is the model's whole input: the chat template rendered by hand gives the chat answer."""
    assert ask.text({"prompt": chat_prompt(TICKET)}) != ask.text()
    chat = httpx.post(f"{ask.server.url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": REPETITIVE}], "max_tokens": 12, "temperature": 0},
        headers={"x-kdgate-force": ask.route}, timeout=60).json()
    body = ask()
    assert body["choices"][0]["text"] == chat["choices"][0]["message"]["content"]
    assert body["usage"] == chat["usage"]  # the same tokens in: the tokenizer adds nothing here (no BOS of its own)


def probe_echo(ask: Asker) -> None:
    assert ask.text({"echo": True}) == BASE["prompt"] + ask.text()
    chunks = sse(ask.response({"echo": True, "stream": True}))
    assert chunks[0]["choices"][0]["text"] == BASE["prompt"] and streamed_text(chunks) == BASE["prompt"] + ask.text()


def probe_frequency_penalty(ask: Asker) -> None:
    assert ask.text({"frequency_penalty": 2.0}) != ask.text()


def probe_presence_penalty(ask: Asker) -> None:
    assert ask.text({"presence_penalty": 2.0}) != ask.text()


def probe_repetition_penalty(ask: Asker) -> None:
    assert ask.text({"repetition_penalty": 1.5}) != ask.text()


def probe_logit_bias(ask: Asker) -> None:
    """A large negative bias on the greedy first token replaces it; a large positive one forces another."""
    first, *_ = ask.token_ids()
    assert ask.token_ids({"logit_bias": {str(first): -100}})[0] != first
    forced = (first + 1) % 1024
    assert ask.token_ids({"logit_bias": {str(forced): 100}})[0] == forced


def probe_logprobs(ask: Asker) -> None:
    """OpenAI's completions shape as vLLM fills it: the tokens spell the text, offsets count from 0, and each
    `top_logprobs` dict holds the sampled token and the top k (k entries, or k + 1 when it is not among them)."""
    body = ask({"logprobs": 3})
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    tokens = logprobs["tokens"]
    assert len(tokens) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == len(
        logprobs["text_offset"]) == body["usage"]["completion_tokens"]
    assert "".join(tokens) == choice["text"]
    assert logprobs["text_offset"] == [sum(len(token) for token in tokens[:index]) for index in range(len(tokens))]
    for token, logprob, top in zip(tokens, logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert top[token] == logprob and 3 <= len(top) <= 4
        assert logprob >= sorted(top.values())[-3]  # greedy: the sampled token is among the top 3
    only = ask({"logprobs": 0})["choices"][0]["logprobs"]
    assert only["top_logprobs"] == [{token: value} for token, value in zip(only["tokens"], only["token_logprobs"],
                                                                           strict=True)]
    assert ask()["choices"][0]["logprobs"] is None


def probe_max_tokens(ask: Asker) -> None:
    body = ask({"max_tokens": 3})
    assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"
    unbounded = {key: value for key, value in BASE.items() if key != "max_tokens"}
    assert ask(base=unbounded | {"ignore_eos": True})["usage"]["completion_tokens"] == 16  # OpenAI's and vLLM's


def probe_n(ask: Asker) -> None:
    body = ask({"n": 1})
    assert len(body["choices"]) == 1 and body["choices"][0]["text"] == ask.text()


def probe_seed(ask: Asker) -> None:
    sampled = {"temperature": 1.0}
    assert ask.text(sampled | {"seed": 1}) == ask.text(sampled | {"seed": 1})
    assert any(ask.text(sampled | {"seed": seed}) != ask.text(sampled | {"seed": 1}) for seed in (2, 3, 4))


def probe_stop(ask: Asker) -> None:
    full = ask.text()
    stop = full[5:8]
    choice = ask({"stop": [stop]})["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    assert choice["text"] == full[:full.index(stop)]


def probe_stream(ask: Asker) -> None:
    response = ask.response({"stream": True})
    chunks = sse(response)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    assert len({chunk["id"] for chunk in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    assert streamed_text(chunks) == ask.text()
    assert chunks[-1]["choices"][0]["finish_reason"] == ask()["choices"][0]["finish_reason"]


def probe_stream_options(ask: Asker) -> None:
    chunks = sse(ask.response({"stream": True, "stream_options": {"include_usage": True}}))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == ask()["usage"]
    assert all("usage" not in chunk for chunk in chunks[:-1])


def probe_temperature(ask: Asker) -> None:
    assert ask.text({"temperature": 2.0, "seed": 3}) != ask.text()


def probe_top_p(ask: Asker) -> None:
    assert ask.text({"temperature": 2.0, "seed": 3, "top_p": 1e-9}) == ask.text()


def probe_top_k(ask: Asker) -> None:
    assert ask.text({"temperature": 2.0, "seed": 3, "top_k": 1}) == ask.text()


def probe_min_p(ask: Asker) -> None:
    assert ask.text({"temperature": 2.0, "seed": 3, "min_p": 1.0}) == ask.text()


def probe_stop_token_ids(ask: Asker) -> None:
    ids = ask.token_ids()
    at = next(index for index in range(2, len(ids)) if ids[index] not in ids[:index])  # its first appearance
    body = ask({"stop_token_ids": [ids[at]]})
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == ids[at]
    assert body["usage"]["completion_tokens"] == at + 1 and ask.text().startswith(choice["text"])


def probe_ignore_eos(ask: Asker) -> None:
    ticket = BASE | {"prompt": chat_prompt(TICKET), "max_tokens": 80}
    assert ask(base=ticket)["choices"][0]["finish_reason"] == "stop"  # the answer ends before 80 tokens
    body = ask({"ignore_eos": True}, base=ticket)
    assert body["usage"]["completion_tokens"] == 80 and body["choices"][0]["finish_reason"] == "length"


def probe_response_format(ask: Asker) -> None:
    """The repetitive prompt's free completion is no JSON; asked for a schema or an object, it is one; a schema
    keyword the gateway cannot enforce is a 400 named where the client put it."""
    with pytest.raises(ValueError):
        json.loads(ask.text())
    schema = {"type": "object", "properties": {"word": {"type": "string", "enum": ["the", "a"]}},
              "required": ["word"], "additionalProperties": False}
    fitted = ask.text({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
                       "max_tokens": 40})
    assert json.loads(fitted)["word"] in ("the", "a")
    ticket = {"prompt": chat_prompt(TICKET), "max_tokens": 160}  # an object the model can end
    assert isinstance(json.loads(ask.text(ticket | {"response_format": {"type": "json_object"}})), dict)
    assert ask.text({"response_format": {"type": "text"}}) == ask.text()
    unenforceable = {"type": "object", "properties": {"age": {"type": "integer", "minimum": 3}}}
    response = post(ask.server, BASE | {"response_format": {"type": "json_schema", "json_schema": {
        "name": "a", "schema": unenforceable}}}, ask.route)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "response_format.json_schema.schema.properties.age.minimum"


def probe_structured_outputs(ask: Asker) -> None:
    assert ask.text({"structured_outputs": {"choice": ["maybe", "certainly"]}}) in ("maybe", "certainly")
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", ask.text({"structured_outputs": {"regex": r"[0-9]{3}-[a-z]{2}"}}))
    grammar = 'root ::= "order " [0-9] [0-9]'
    assert re.fullmatch(r"order [0-9]{2}", ask.text({"structured_outputs": {"grammar": grammar}}))


def probe_return_tokens_as_token_ids(ask: Asker) -> None:
    logprobs = ask({"logprobs": 1, "return_tokens_as_token_ids": True})["choices"][0]["logprobs"]
    assert all(re.fullmatch(r"token_id:\d+", token) for token in logprobs["tokens"])
    assert all(re.fullmatch(r"token_id:\d+", token) for top in logprobs["top_logprobs"] for token in top)
    assert logprobs["text_offset"][1] == len(logprobs["tokens"][0])  # counted over what is written, as vLLM does


PROBES = {name.removeprefix("probe_"): probe for name, probe in globals().items() if name.startswith("probe_")}


def test_every_honoured_field_has_a_probe():
    assert set(PROBES) == set(fields(Treatment.HONOURED))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", sorted(PROBES))
def test_an_honoured_field_does_what_the_table_says(gateway, name, route):
    PROBES[name](Asker(gateway, route))


# ------------------------------------------------------------------------------------------- shapes and routes


def test_a_completion_has_openais_shape_usage_and_route(gateway):
    response = post(gateway, BASE)
    body = response.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "kdgate-demo"
    assert set(body["choices"][0]) == {"index", "text", "logprobs", "finish_reason"}
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert body["kdgate"] == {"route": "student", "reason": "policy:student_only", "model": "demo-student",
                              "student_version": "initial", "handed_off_tokens": None}
    assert (response.headers["x-kdgate-route"], response.headers["x-kdgate-route-reason"]) == (
        "student", "policy:student_only")
    chunks = sse(post(gateway, BASE | {"stream": True, "stream_options": {"include_usage": True}}))
    assert chunks[-2]["kdgate"] == chunks[-1]["kdgate"] == body["kdgate"]  # the finish and the usage chunk


def test_a_forced_teacher_serves_and_says_so(gateway, engine_server):
    response = post(gateway, BASE, "teacher")
    body = response.json()
    assert response.headers["x-kdgate-route"] == "teacher" and body["kdgate"]["reason"] == "forced:header"
    assert body["kdgate"]["model"] == "demo-teacher"
    direct = httpx.post(f"{engine_server.base_url}/completions", json=BASE | {"model": engine_server.model},
                        timeout=60).json()
    assert body["choices"][0]["text"] == direct["choices"][0]["text"] and body["usage"] == direct["usage"]
    assert "kdgate" not in direct and direct["model"] == engine_server.model  # an engine server names no route


def test_the_openai_client_completes_streamed_and_not(gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0)
    whole = client.completions.create(model="kdgate-demo", prompt=chat_prompt(TICKET), max_tokens=24, temperature=0,
                                      logprobs=2, stop=["}"])
    choice = whole.choices[0]
    assert whole.object == "text_completion" and choice.text and choice.finish_reason in ("stop", "length")
    assert "".join(choice.logprobs.tokens) == choice.text and len(choice.logprobs.top_logprobs[0]) >= 2
    assert whole.model_extra["kdgate"]["route"] == "student"
    chunks = list(client.completions.create(model="kdgate-demo", prompt=chat_prompt(TICKET), max_tokens=24,
                                            temperature=0, stop=["}"], stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == choice.text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="kdgate-demo", prompt="hi", best_of=3)
    assert refused.value.param == "best_of"


# ------------------------------------------------------------------------------------------- routing as chat's

HELD_OUT = chat_prompt("Dear team, Order 35533 was a Plse Camera and order 24315 was a PhotoFrge. The Plse Camera "
                       "makes a grinding noise. Last year order 11918 had the same problem. I have a Basic account. "
                       "Thanks, James")


@pytest.fixture(scope="module")
def keeping_gateway(demo_dirs, engine_server, tmp_path_factory):
    yield from routed_by(KEEP, demo_dirs, engine_server, tmp_path_factory)


@pytest.fixture(scope="module")
def escalating_gateway(demo_dirs, engine_server, tmp_path_factory):
    yield from routed_by(ESCALATE, demo_dirs, engine_server, tmp_path_factory)


@pytest.mark.parametrize("threshold", [KEEP, ESCALATE], ids=["keep", "escalate"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_confidence_policy_holds_back_and_decides_as_for_chat(request, threshold, stream):
    """Hold-back on a completion: kept, the student's answer; escalated, the teacher's from the start."""
    server = request.getfixturevalue("keeping_gateway" if threshold == KEEP else "escalating_gateway")
    route, reason = ROUTE_AT[threshold]
    body = {"prompt": HELD_OUT, "max_tokens": 24, "temperature": 0}
    forced = Asker(server, route).text(base=body)
    response = Asker(server, None).response({"stream": stream}, base=body)
    assert (response.headers["x-kdgate-route"], response.headers["x-kdgate-route-reason"]) == (route, reason)
    text = streamed_text(sse(response)) if stream else response.json()["choices"][0]["text"]
    assert text == forced


MIN_PROB = 0.999  # the demo student's answer to HELD_OUT falls below it 25 tokens in (at a miscopied digit)


@pytest.fixture(scope="module")
def handoff_gateway(demo_dirs, engine_server):
    from gateway.app import create_app

    routing = RoutingSettings(policy="student_only", handoff=HandoffSettings(enabled=True, min_prob=MIN_PROB))
    with ThreadedServer(create_app(gateway_settings(demo_dirs, engine_server, routing=routing))) as server:
        yield server


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_mid_stream_handoff_joins_the_students_text_and_the_teachers_continuation(handoff_gateway, engine_server,
                                                                                    stream):
    """The teacher continues the prompt plus the text already sent, as one raw prompt: the client gets the
    student's sure tokens, then exactly what the teacher writes after them."""
    body = {"prompt": HELD_OUT, "max_tokens": 48, "temperature": 0}
    student = Asker(handoff_gateway, "student")({"logprobs": 0}, base=body)["choices"][0]["logprobs"]
    cut = next(index for index, logprob in enumerate(student["token_logprobs"]) if logprob < math.log(MIN_PROB))
    assert cut > 0  # mid-stream: the student wrote some of the answer
    kept = "".join(student["tokens"][:cut])
    continued = httpx.post(f"{engine_server.base_url}/completions", timeout=60, json={
        "model": engine_server.model, "prompt": body["prompt"] + kept, "max_tokens": 48 - cut,
        "temperature": 0}).json()

    response = Asker(handoff_gateway, None).response({"stream": stream} | (
        {"stream_options": {"include_usage": True}} if stream else {}), base=body)
    if stream:
        chunks = sse(response)
        text, usage, kdgate = streamed_text(chunks), chunks[-1]["usage"], chunks[-1]["kdgate"]
    else:
        whole = response.json()
        text, usage, kdgate = whole["choices"][0]["text"], whole["usage"], whole["kdgate"]
    assert text == kept + continued["choices"][0]["text"]
    assert usage["completion_tokens"] == cut + continued["usage"]["completion_tokens"]
    assert kdgate == {"route": "teacher", "reason": "handoff", "model": "demo-teacher", "student_version": "initial",
                      "handed_off_tokens": cut}
    # a stream's headers go out before the handoff, naming who started; a whole answer's name who finished
    assert response.headers["x-kdgate-route"] == ("student" if stream else "teacher")


def test_a_constrained_completion_stays_valid_through_a_handoff(handoff_gateway):
    """The teacher continues the prompt plus the sent text under the grammar of the rest of the document (as a chat
    answer's continuation): one valid object, though two models wrote it."""
    body = {"prompt": HELD_OUT, "max_tokens": 160, "temperature": 0, "response_format": {"type": "json_object"}}
    for stream in (False, True):
        response = Asker(handoff_gateway, None).response({"stream": stream}, base=body)
        if stream:
            chunks = sse(response)
            text, kdgate = streamed_text(chunks), chunks[-1]["kdgate"]
        else:
            text, kdgate = response.json()["choices"][0]["text"], response.json()["kdgate"]
        assert kdgate["reason"] == "handoff" and kdgate["handed_off_tokens"] > 0
        assert isinstance(json.loads(text), dict)


# ------------------------------------------------------------------------------------------- shadow


def skipped(url: str) -> dict[str, float]:
    return {sample.labels["kind"]: sample.value
            for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text)
            for sample in family.samples
            if sample.name == "kdgate_shadow_skipped_total" and sample.labels.get("reason") == "raw_prompt"}


def test_completions_are_not_shadowed_and_are_counted(demo_dirs, engine_server, tmp_path):
    """Records hold chat messages (the teacher scores, and re-distillation trains, through the chat template): a
    completion is counted as the shadow job it would have been, and no record is made of it."""
    from gateway.app import create_app

    shadow = ShadowSettings(enabled=True, sample_rate=1.0, store_url=f"sqlite:///{tmp_path}/shadow.sqlite3")
    with ThreadedServer(create_app(gateway_settings(demo_dirs, engine_server, shadow=shadow))) as server:
        assert post(server, BASE).status_code == 200
        assert sse(post(server, BASE | {"stream": True}))
        assert skipped(server.url) == {"shadow": 2.0}
        chat = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": REPETITIVE}], "max_tokens": 12, "temperature": 0})
        assert chat.status_code == 200
        store = server.app.state.chat.shadow.store
        deadline = time.monotonic() + 60
        while not list(store.iter_records()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [record.kind for record in store.iter_records()] == ["shadow"]  # the chat request's alone

