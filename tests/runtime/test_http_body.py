"""What the HTTP backend sends upstream: every sampling field, under vLLM's name, so that a vLLM-compatible server
answers as the local engine does; and nothing at its default, so that a plain OpenAI server still works (issue 26)."""

from __future__ import annotations

import httpx
import pytest

from runtime.backends.http import HttpBackend
from runtime.contract import BackendInfo, GenerationRequest, SamplingParams
from runtime.engine.engine import EngineSettings, LocalEngine
from tests.runtime.test_engine import run

REPETITIVE = "The the the the"
FIELDS = [  # each changes the demo teacher's answer to REPETITIVE: greedy, or for the last two a seeded draw
    {"presence_penalty": 2.0},
    {"frequency_penalty": 2.0},
    {"repetition_penalty": 1.5},
    {"logit_bias": ((265, -100.0), (19, 5.5))},
    {"stop_token_ids": (292,)},
    {"top_k": 1, "temperature": 2.0, "seed": 3},
    {"min_p": 1.0, "temperature": 2.0, "seed": 3},
]


def backend(client: httpx.AsyncClient, base_url: str = "http://upstream/v1", model: str = "m") -> HttpBackend:
    return HttpBackend(BackendInfo("teacher", model, "http"), base_url, client)


def ask(request_id: str, **sampling) -> GenerationRequest:
    fields = {"max_tokens": 12, "temperature": 0.0, "top_logprobs": 1} | sampling
    return GenerationRequest(request_id, ({"role": "user", "content": REPETITIVE},), SamplingParams(**fields),
                             token_ids=True)


async def test_each_sampling_field_goes_out_under_vllms_name():
    async with httpx.AsyncClient() as client:
        body = backend(client)._body(ask("all", presence_penalty=0.5, frequency_penalty=-0.5, repetition_penalty=1.2,
                                         min_p=0.1, top_k=7, logit_bias=((5, -1.5), (9, 100.0)),
                                         stop_token_ids=(2, 3)), stream=True)
        plain = backend(client)._body(ask("plain"), stream=True)
    assert body["presence_penalty"] == 0.5 and body["frequency_penalty"] == -0.5
    assert body["repetition_penalty"] == 1.2 and body["min_p"] == 0.1 and body["top_k"] == 7
    assert body["logit_bias"] == {"5": -1.5, "9": 100.0}  # OpenAI's keys: token ids as strings
    assert body["stop_token_ids"] == [2, 3]
    assert not {"presence_penalty", "frequency_penalty", "repetition_penalty", "min_p", "top_k", "logit_bias",
                "stop_token_ids"} & set(plain)


@pytest.fixture(scope="module")
def local_teacher(demo_dirs):
    engine = LocalEngine(EngineSettings(model_dir=demo_dirs[1], threads=1))
    yield engine
    engine.shutdown()


@pytest.mark.parametrize("fields", FIELDS, ids=lambda fields: next(iter(fields)))
async def test_a_server_behind_the_http_backend_answers_as_the_local_engine(engine_server, local_teacher, fields):
    """The same request, sent over HTTP to the engine server or run in-process, gives the same tokens; and the
    field made a difference (so it was not dropped on the way)."""
    name = next(iter(fields))
    without = {key: value for key, value in fields.items() if key != name}
    async with httpx.AsyncClient(timeout=60) as client:
        remote = backend(client, engine_server.base_url, engine_server.model)
        over_http = await run(remote, ask("http", **fields))
        plain = await run(remote, ask("plain", **without))
    in_process = await run(local_teacher, ask("local", **fields))
    assert [entry.token_id for entry in over_http[1]] == [entry.token_id for entry in in_process[1]]
    assert over_http[0] == in_process[0]
    assert (over_http[2].finish_reason, over_http[2].stop_reason) == (in_process[2].finish_reason,
                                                                        in_process[2].stop_reason)
    assert over_http[0] != plain[0]


async def test_structured_outputs_go_out_as_vllms_own_object():
    """vLLM's chat API reads the grammar from `structured_outputs` itself; nothing is sent when there is none."""
    constraint = {"json": {"type": "object", "properties": {"queue": {"enum": ["billing"]}}}}
    async with httpx.AsyncClient() as client:
        body = backend(client)._body(GenerationRequest("so", ({"role": "user", "content": "hi"},),
                                                       SamplingParams(max_tokens=4), structured_outputs=constraint),
                                     stream=True)
        plain = backend(client)._body(ask("plain"), stream=True)
    assert body["structured_outputs"] == constraint
    assert "structured_outputs" not in plain
