"""Every field of a chat request is honoured or refused (issue 26): the table in `gateway.chat.fields` covers each
field of the `openai` package's own request type, the wire model and the OpenAPI document declare exactly the
honoured and ignored ones, docs/api.md shows the same table, and over real HTTP each honoured field changes the
answer on both backends (the local student, and the teacher behind the HTTP backend), each ignored one changes
nothing, and each refused one is a 400 that names it."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from openai.types.chat import completion_create_params

from gateway.chat.fields import REQUEST_FIELDS, Treatment, fields
from gateway.chat.protocol import ChatCompletionRequest
from tests.conftest import ROOT

ROUTES = ["student", "teacher"]  # the local engine, and an engine server behind the HTTP backend
REPETITIVE = "The the the the"  # the demo models are unsure of it: penalties of 1-2 change their answers
TICKET = "Hello, my SmartHub Pro from order 48213 will not turn on. This is urgent! Thanks, Maria"
BASE = {"messages": [{"role": "user", "content": REPETITIVE}], "max_tokens": 12, "temperature": 0}


def post(gateway, body: dict, route: str | None = None) -> httpx.Response:
    headers = {"x-kdgate-force": route} if route else {}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=60)


class Asker:
    """`ask(changes)`: the answer to BASE with `changes` on one route (a 200, or the test fails)."""

    def __init__(self, gateway, route: str):
        self.gateway, self.route = gateway, route

    def response(self, changes: dict | None = None, base: dict = BASE) -> httpx.Response:
        response = post(self.gateway, base | (changes or {}), self.route)
        assert response.status_code == 200, response.text
        return response

    def __call__(self, changes: dict | None = None, base: dict = BASE) -> dict:
        return self.response(changes, base).json()

    def content(self, changes: dict | None = None, base: dict = BASE) -> str:
        return self(changes, base)["choices"][0]["message"]["content"]

    def token_ids(self, changes: dict | None = None, base: dict = BASE) -> list[int]:
        body = self(changes | {"logprobs": True, "return_tokens_as_token_ids": True}, base)
        return [int(entry["token"].removeprefix("token_id:")) for entry in body["choices"][0]["logprobs"]["content"]]


def sse(response: httpx.Response) -> list[dict]:
    payloads = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    return [json.loads(payload) for payload in payloads[:-1]]


# ------------------------------------------------------------------------------------------- the table itself


def openai_request_fields() -> set[str]:
    names = set()
    for typed_dict in (completion_create_params.CompletionCreateParamsNonStreaming,
                       completion_create_params.CompletionCreateParamsStreaming):
        names |= typed_dict.__required_keys__ | typed_dict.__optional_keys__
    return names


def test_the_table_classifies_every_field_of_openais_chat_request():
    """A field the `openai` package adds fails this until the table says what kdgate does with it."""
    ours = {name for name, field in REQUEST_FIELDS.items() if field.origin == "openai"}
    assert openai_request_fields() - ours == set(), "classify these new OpenAI fields in gateway/chat/fields.py"
    assert ours - openai_request_fields() == set(), "these are not OpenAI's fields: mark their origin"


def test_the_wire_model_declares_exactly_the_honoured_and_ignored_fields():
    assert set(ChatCompletionRequest.model_fields) == set(fields(Treatment.HONOURED)) | set(fields(Treatment.IGNORED))


def test_the_openapi_document_lists_exactly_the_honoured_and_ignored_fields(gateway):
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    schema = document["components"]["schemas"]["ChatCompletionRequest"]
    assert set(schema["properties"]) == set(fields(Treatment.HONOURED)) | set(fields(Treatment.IGNORED))
    assert schema["additionalProperties"] is False
    for name in fields(Treatment.IGNORED):
        assert schema["properties"][name]["description"].startswith("Accepted and ignored: ")
    operation = document["paths"]["/v1/chat/completions"]["post"]
    assert all(f"`{name}`" in operation["description"] for name in fields(Treatment.REFUSED))


def test_docs_api_lists_every_field_and_what_kdgate_does_with_it():
    page = (ROOT / "docs" / "api.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (honoured|ignored|refused) \|", page, flags=re.MULTILINE))
    assert rows == {name: field.treatment.value for name, field in REQUEST_FIELDS.items()}


# ------------------------------------------------------------------------------------------- refused fields

REFUSED_VALUES = {
    "audio": {"voice": "alloy", "format": "wav"},
    "function_call": "auto",
    "functions": [{"name": "lookup", "parameters": {"type": "object"}}],
    "modalities": ["text", "audio"],
    "moderation": {"model": "omni-moderation-latest"},
    "reasoning_effort": "low",
    "verbosity": "low",
    "web_search_options": {},
}
HARMLESS_VALUES = [("modalities", ["text"])] + [(name, None) for name in REFUSED_VALUES]


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
    response = post(gateway, BASE | {name: value}, "student")
    assert response.status_code == 200, response.text


def test_an_unknown_field_is_a_400_that_names_it(gateway):
    response = post(gateway, BASE | {"min_tokens": 4, "guided_json": {}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "guided_json" and "`guided_json`, `min_tokens` are not fields" in error["message"]


# ------------------------------------------------------------------------------------------- ignored fields

IGNORED_VALUES = {
    "metadata": {"team": "support"},
    "prediction": {"type": "content", "content": "The the"},
    "prompt_cache_key": "tenant-7",
    "prompt_cache_options": {"mode": "implicit"},
    "prompt_cache_retention": "24h",
    "safety_identifier": "user-hash-1",
    "service_tier": "flex",
    "store": True,
    "user": "maria",
}


def test_every_ignored_field_has_a_test_value():
    assert set(IGNORED_VALUES) == set(fields(Treatment.IGNORED))


@pytest.mark.parametrize("route", ROUTES)
def test_ignored_fields_are_accepted_and_change_nothing(gateway, route):
    ask = Asker(gateway, route)
    assert ask.content(IGNORED_VALUES) == ask.content()


# ------------------------------------------------------------------------------------------- honoured fields
# One probe per honoured field: it asserts what the field does, against one route's answers.


def probe_messages(ask: Asker) -> None:
    assert ask.content({"messages": [{"role": "user", "content": TICKET}]}) != ask.content()


def probe_model(ask: Asker) -> None:
    assert ask({"model": "kdgate-demo"})["model"] == "kdgate-demo"


def probe_frequency_penalty(ask: Asker) -> None:
    assert ask.content({"frequency_penalty": 2.0}) != ask.content()


def probe_presence_penalty(ask: Asker) -> None:
    assert ask.content({"presence_penalty": 2.0}) != ask.content()


def probe_repetition_penalty(ask: Asker) -> None:
    assert ask.content({"repetition_penalty": 1.5}) != ask.content()


def probe_logit_bias(ask: Asker) -> None:
    """A large negative bias on the greedy first token replaces it; a large positive one forces another."""
    first, *_ = ask.token_ids({})
    assert ask.token_ids({"logit_bias": {str(first): -100}})[0] != first
    forced = (first + 1) % 1024
    assert ask.token_ids({"logit_bias": {str(forced): 100}})[0] == forced


def probe_logprobs(ask: Asker) -> None:
    body = ask({"logprobs": True})
    assert len(body["choices"][0]["logprobs"]["content"]) == body["usage"]["completion_tokens"]
    assert ask()["choices"][0]["logprobs"] is None


def probe_top_logprobs(ask: Asker) -> None:
    content = ask({"logprobs": True, "top_logprobs": 3})["choices"][0]["logprobs"]["content"]
    assert all(len(entry["top_logprobs"]) == 3 for entry in content)


def probe_max_completion_tokens(ask: Asker) -> None:
    body = ask({"max_completion_tokens": 3})  # wins over BASE's max_tokens
    assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"


def probe_max_tokens(ask: Asker) -> None:
    body = ask({"max_tokens": 3})
    assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"


def probe_n(ask: Asker) -> None:
    body = ask({"n": 1})
    assert len(body["choices"]) == 1 and body["choices"][0]["message"]["content"] == ask.content()


def probe_seed(ask: Asker) -> None:
    sampled = {"temperature": 1.0}
    assert ask.content(sampled | {"seed": 1}) == ask.content(sampled | {"seed": 1})
    assert any(ask.content(sampled | {"seed": seed}) != ask.content(sampled | {"seed": 1}) for seed in (2, 3, 4))


def probe_stop(ask: Asker) -> None:
    full = ask.content()
    stop = full[5:8]
    choice = ask({"stop": [stop]})["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    assert choice["message"]["content"] == full[:full.index(stop)]


def probe_stream(ask: Asker) -> None:
    chunks = sse(ask.response({"stream": True}))
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks) == ask.content()


def probe_stream_options(ask: Asker) -> None:
    chunks = sse(ask.response({"stream": True, "stream_options": {"include_usage": True}}))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == ask()["usage"]


def probe_temperature(ask: Asker) -> None:
    assert ask.content({"temperature": 2.0, "seed": 3}) != ask.content()


def probe_top_p(ask: Asker) -> None:
    assert ask.content({"temperature": 2.0, "seed": 3, "top_p": 1e-9}) == ask.content()


def probe_top_k(ask: Asker) -> None:
    assert ask.content({"temperature": 2.0, "seed": 3, "top_k": 1}) == ask.content()


def probe_min_p(ask: Asker) -> None:
    assert ask.content({"temperature": 2.0, "seed": 3, "min_p": 1.0}) == ask.content()


def probe_stop_token_ids(ask: Asker) -> None:
    ids = ask.token_ids({})
    at = next(index for index in range(2, len(ids)) if ids[index] not in ids[:index])  # its first appearance
    body = ask({"stop_token_ids": [ids[at]]})
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == ids[at]
    assert body["usage"]["completion_tokens"] == at + 1 and ask.content().startswith(choice["message"]["content"])


def probe_ignore_eos(ask: Asker) -> None:
    ticket = BASE | {"messages": [{"role": "user", "content": TICKET}], "max_tokens": 80}
    assert ask(base=ticket)["choices"][0]["finish_reason"] == "stop"  # the answer ends before 80 tokens
    body = ask({"ignore_eos": True}, base=ticket)
    assert body["usage"]["completion_tokens"] == 80 and body["choices"][0]["finish_reason"] == "length"


def probe_add_generation_prompt(ask: Asker) -> None:
    assert ask({"add_generation_prompt": False})["usage"]["prompt_tokens"] < ask()["usage"]["prompt_tokens"]


def probe_continue_final_message(ask: Asker) -> None:
    """Continuing the first tokens of the greedy answer gives the rest of it."""
    full = ask({"logprobs": True})["choices"][0]
    begun = "".join(entry["token"] for entry in full["logprobs"]["content"][:3])
    rest = ask.content({"messages": [*BASE["messages"], {"role": "assistant", "content": begun}],
                        "add_generation_prompt": False, "continue_final_message": True, "max_tokens": 9})
    assert begun + rest == full["message"]["content"]


def probe_prompt_logprobs(ask: Asker) -> None:
    body = ask({"prompt_logprobs": 1})
    assert len(body["prompt_logprobs"]) == body["usage"]["prompt_tokens"] and body["prompt_logprobs"][0] is None


def probe_return_token_ids(ask: Asker) -> None:
    body = ask({"return_token_ids": True, "prompt_logprobs": 0})
    assert len(body["prompt_token_ids"]) == body["usage"]["prompt_tokens"]
    assert "prompt_token_ids" not in ask({"prompt_logprobs": 0})


def probe_response_format(ask: Asker) -> None:
    """The repetitive prompt's free answer is no JSON; asked for a schema or an object, it is one."""
    with pytest.raises(ValueError):
        json.loads(ask.content())
    schema = {"type": "object", "properties": {"word": {"type": "string", "enum": ["the", "a"]}},
              "required": ["word"], "additionalProperties": False}
    fitted = ask.content({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
                          "max_tokens": 40})
    assert json.loads(fitted)["word"] in ("the", "a")
    ticket = {"messages": [{"role": "user", "content": TICKET}], "max_tokens": 160}  # an object the model can end
    assert isinstance(json.loads(ask.content(ticket | {"response_format": {"type": "json_object"}})), dict)
    assert ask.content({"response_format": {"type": "text"}}) == ask.content()


def probe_structured_outputs(ask: Asker) -> None:
    assert ask.content({"structured_outputs": {"choice": ["maybe", "certainly"]}}) in ("maybe", "certainly")
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", ask.content({"structured_outputs": {"regex": r"[0-9]{3}-[a-z]{2}"}}))
    grammar = 'root ::= "order " [0-9] [0-9]'
    assert re.fullmatch(r"order [0-9]{2}", ask.content({"structured_outputs": {"grammar": grammar}}))


ORDER = {"type": "object", "properties": {"order_number": {"type": "string", "pattern": "^[0-9]{5}$"}},
         "required": ["order_number"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": ORDER}},
         {"type": "function", "function": {"name": "ping"}}]
NEWLINE = 204  # the demo tokenizer's "\n": after a call, the grammar lets the answer end or start the next one


def calls(body: dict) -> list[tuple[str, dict]]:
    return [(call["function"]["name"], json.loads(call["function"]["arguments"]))
            for call in body["choices"][0]["message"]["tool_calls"]]


def probe_tools(ask: Asker) -> None:
    """The answer calls one of the tools, with arguments that are a document of its parameters."""
    body = ask({"tools": TOOLS, "tool_choice": "required", "max_tokens": 80})
    name, arguments = calls(body)[0]
    assert body["choices"][0]["finish_reason"] == "tool_calls" and body["choices"][0]["message"]["content"] is None
    assert (name, set(arguments)) in (("lookup_order", {"order_number"}), ("ping", set()))
    assert re.fullmatch(r"[0-9]{5}", arguments.get("order_number", "00000"))


def probe_tool_choice(ask: Asker) -> None:
    named = ask({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "ping"}}, "max_tokens": 80})
    assert calls(named) == [("ping", {})] and named["choices"][0]["finish_reason"] == "stop"
    assert ask({"tools": TOOLS, "tool_choice": "none"})["choices"][0]["message"]["tool_calls"] == []


def probe_parallel_tool_calls(ask: Asker) -> None:
    """Pushed to go on after each call, the answer makes call after call (until `max_tokens` cuts one, and the text
    that does not parse comes back as content, as vLLM returns it), unless calls may not come together."""
    pushed = {"tools": TOOLS, "tool_choice": "required", "max_tokens": 200, "logit_bias": {str(NEWLINE): 100}}
    message = ask(pushed)["choices"][0]["message"]
    assert len(message["tool_calls"]) + (message["content"] or "").count("<tool_call>") >= 2
    assert len(calls(ask(pushed | {"parallel_tool_calls": False}))) == 1


def probe_return_tokens_as_token_ids(ask: Asker) -> None:
    content = ask({"logprobs": True, "return_tokens_as_token_ids": True})["choices"][0]["logprobs"]["content"]
    assert all(re.fullmatch(r"token_id:\d+", entry["token"]) for entry in content)


PROBES = {name.removeprefix("probe_"): probe for name, probe in globals().items() if name.startswith("probe_")}


def test_every_honoured_field_has_a_probe():
    assert set(PROBES) == set(fields(Treatment.HONOURED))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", sorted(PROBES))
def test_an_honoured_field_does_what_the_table_says(gateway, name, route):
    PROBES[name](Asker(gateway, route))


# ------------------------------------------------------------------------------------------- values refused

OUT_OF_RANGE = [("presence_penalty", 2.5), ("frequency_penalty", -2.01), ("logit_bias", {"the": 1}),
                ("logit_bias", {"12": 100.5}), ("logit_bias", {"12": "1"}), ("repetition_penalty", 0),
                ("repetition_penalty", 5e-162),  # schemathesis: 1 / it overflowed float32 into NaN probabilities
                ("min_p", 1.5), ("top_k", -2), ("stop_token_ids", [-1]), ("n", 2),
                ("return_token_ids", True)]  # without `prompt_logprobs`, which the HTTP backend needs to return them


@pytest.mark.parametrize(("name", "value"), OUT_OF_RANGE, ids=lambda value: json.dumps(value))
def test_a_value_out_of_range_is_a_400_that_names_the_field(gateway, name, value):
    response = post(gateway, BASE | {name: value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(name)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("name", "value"), [("logit_bias", {"1024": 5}), ("stop_token_ids", [7, 5000])])
def test_a_token_id_outside_the_vocabulary_is_a_400_that_names_the_field(gateway, name, value, route):
    response = post(gateway, BASE | {name: value}, route)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == name and "outside this model's vocabulary" in error["message"]


# ------------------------------------------------------------------------------------------- from the SDK


def test_the_openai_client_gets_its_fields_honoured_and_refused(gateway):
    """What a user of the official client sees: OpenAI's sampling fields as arguments and vLLM's in `extra_body`
    change the answer, and `functions` raises `BadRequestError` naming the parameter."""
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0)
    messages = BASE["messages"]

    def content(**fields) -> str:
        completion = client.chat.completions.create(model="kdgate-demo", messages=messages, max_tokens=12,
                                                    **{"temperature": 0} | fields)
        return completion.choices[0].message.content

    plain = content()
    assert content(presence_penalty=2.0) != plain and content(frequency_penalty=2.0) != plain
    assert content(extra_body={"repetition_penalty": 1.5}) != plain
    assert content(temperature=2.0, seed=3) != plain
    assert content(temperature=2.0, seed=3, extra_body={"top_k": 1}) == plain
    with pytest.raises(openai.BadRequestError) as refused:
        content(functions=[{"name": "lookup", "parameters": {"type": "object"}}])
    assert refused.value.param == "functions" and "not supported" in refused.value.message


def test_a_message_key_is_honoured_or_refused_too(gateway):
    """Inside a message: `name` was accepted and dropped, and any other key (`tool_calls`, `tool_call_id`) too. Now
    `name` goes to the chat template with its message, as vLLM passes it, and any other key is a 400 naming it."""
    from types import SimpleNamespace

    from gateway.chat.protocol import ChatCompletionRequest
    from gateway.chat.serving import ChatServing
    from gateway.serving import ServingLimits

    url = f"{gateway.url}/v1/chat/completions"
    named = {"model": "kdgate-demo", "max_tokens": 4,
             "messages": [{"role": "user", "content": "Hi, order 12345 never arrived.", "name": "gustav"}]}
    assert httpx.post(url, json=named, timeout=60).status_code == 200
    limits = ServingLimits(max_tokens_limit=4096, default_max_tokens=256, max_top_logprobs=20)
    generation = ChatServing._generation_request(SimpleNamespace(limits=limits),
                                                 ChatCompletionRequest.model_validate(named))
    assert generation.messages[0] == {"role": "user", "content": "Hi, order 12345 never arrived.", "name": "gustav"}
    for key, value, says in (("tool_call_id", "call_1", "`tool_call_id` belongs to `tool` messages"),
                             ("tool_calls", [], "`tool_calls` belongs to `assistant` messages"),
                             ("refusal", None, "`refusal` in a message is not supported")):
        body = named | {"messages": [named["messages"][0] | {key: value}]}
        refused = httpx.post(url, json=body, timeout=60)
        assert refused.status_code == 400, refused.text
        assert says in refused.json()["error"]["message"]
