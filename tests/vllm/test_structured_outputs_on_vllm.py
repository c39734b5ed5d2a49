"""Structured outputs on real vLLM (0.32 CPU, xgrammar 0.2.8) against the local engine: the same
`structured_outputs` object, sent by kdgate's HTTP backend or run in-process, gives the same tokens, finish and stop
reasons and logprobs at temperature 0 (top_logprobs included: the allowed tokens renormalised, then the same
forbidden ones at -9999.0), over the golden tickets and each kind of constraint; the grammar's interplay with the
other fields is vLLM's; and what vLLM refuses, the local engine refuses."""

from __future__ import annotations

import json

import httpx
import pytest

from distill.demo import catalog
from runtime.backends.http import HttpBackend
from runtime.contract import BackendInfo, Delta, GenerationRequest, SamplingParams
from runtime.demo import ARTIFACTS_DIR
from runtime.engine.engine import EngineSettings, LocalEngine
from runtime.errors import InvalidRequest, UpstreamRejected

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]  # the first test may wait for both servers to start

GOLDEN = [json.loads(line)["messages"] for line in (ARTIFACTS_DIR / "golden.jsonl").read_text().splitlines()[:8]]
SCHEMA = {
    "type": "object",
    "properties": {"queue": {"enum": list(catalog.QUEUES)}, "priority": {"enum": list(catalog.PRIORITIES)},
                   "reply": {"type": "string"}},
    "required": ["queue", "priority", "reply"], "additionalProperties": False,
}
CONSTRAINTS = {
    "json": {"json": SCHEMA},
    "json_object": {"json_object": True},
    "regex": {"regex": "[a-z ]{1,12}"},  # letters the demo models seldom say: the mask decides most tokens
    "choice": {"choice": list(catalog.QUEUES)},
    "grammar": {"grammar": 'root ::= "P" [1-4] " " queue\nqueue ::= "billing" | "returns" | "repairs"'},
    "lark": {"grammar": 'start: "P" /[1-4]/'},
}
LOGPROB_TOLERANCE = 1e-3  # measured: 4.5e-5 at most over 120 requests (fp32 on both sides, different kernels)


def ask(messages, constraint: dict, *, continue_final: bool = False, **fields) -> GenerationRequest:
    sampling = SamplingParams(**({"max_tokens": 96, "temperature": 0.0, "top_logprobs": 5} | fields))
    return GenerationRequest("so", tuple(messages), sampling, add_generation_prompt=not continue_final,
                             continue_final_message=continue_final, token_ids=True, structured_outputs=constraint)


async def answer(backend, request: GenerationRequest) -> dict:
    tokens, finish = [], None
    async for event in backend.generate(request):
        if isinstance(event, Delta):
            tokens += event.logprobs
        else:
            finish = (event.finish_reason, event.stop_reason, event.completion_tokens)
    return {"ids": [entry.token_id for entry in tokens], "finish": finish,
            "logprobs": [entry.logprob for entry in tokens],
            "top_ids": [[top.token_id for top in entry.top_logprobs] for entry in tokens],
            "top_logprobs": [[top.logprob for top in entry.top_logprobs] for entry in tokens]}


def assert_agree(local: dict, remote: dict, what) -> None:
    assert (remote["ids"], remote["finish"]) == (local["ids"], local["finish"]), what
    assert remote["top_ids"] == local["top_ids"], what
    pairs = zip(local["logprobs"] + sum(local["top_logprobs"], []),
                remote["logprobs"] + sum(remote["top_logprobs"], []), strict=True)
    assert max(abs(a - b) for a, b in pairs) < LOGPROB_TOLERANCE, what


@pytest.fixture(scope="module", params=["student", "teacher"])
def pair(request, vllm_servers, demo_dirs):
    """(the local engine, the model's vLLM server) for one demo model."""
    role = request.param
    engine = LocalEngine(EngineSettings(model_dir=demo_dirs[0 if role == "student" else 1], threads=1))
    yield engine, getattr(vllm_servers, role)
    engine.shutdown()


async def test_each_constraint_gives_vllms_tokens_and_logprobs_on_the_golden_tickets(pair):
    engine, server = pair
    forced = 0
    async with httpx.AsyncClient(timeout=120) as client:
        vllm = HttpBackend(BackendInfo("model", server.name, "http"), server.base_url, client)
        for index, messages in enumerate(GOLDEN):
            for kind, constraint in CONSTRAINTS.items():
                local = await answer(engine, ask(messages, constraint))
                assert_agree(local, await answer(vllm, ask(messages, constraint)), (index, kind))
                forced += sum(tops[1:] == [-9999.0] * 4 for tops in local["top_logprobs"])
    assert forced >= 50  # the mask decided many tokens alone: the padding shape was compared too


FIELD_CASES = {  # the grammar with the other fields, as vLLM combines them
    "max_tokens": ({"json": SCHEMA}, {"max_tokens": 10}),  # the document is cut: length
    "stop_token_ids": ({"regex": "(yes|no)"}, {"stop_token_ids": (5,), "logit_bias": ((5, 100.0),)}),
    "logit_bias": ({"choice": ["billing", "returns"]}, {"logit_bias": ((332, 100.0), (587, 3.0))}),
    "penalties": ({"json": SCHEMA}, {"presence_penalty": 2.0, "repetition_penalty": 1.3}),
    "ignore_eos": ({"regex": "(yes|no)"}, {"ignore_eos": True, "max_tokens": 8}),
    "empty_regex": ({"regex": ""}, {}),
}


@pytest.mark.parametrize("case", list(FIELD_CASES))
async def test_the_grammar_with_other_fields_is_vllms(pair, case):
    engine, server = pair
    constraint, fields = FIELD_CASES[case]
    async with httpx.AsyncClient(timeout=120) as client:
        vllm = HttpBackend(BackendInfo("model", server.name, "http"), server.base_url, client)
        for messages in GOLDEN[:2]:
            local = await answer(engine, ask(messages, constraint, **fields))
            assert_agree(local, await answer(vllm, ask(messages, constraint, **fields)), case)


async def test_under_continue_final_message_both_start_the_grammar_afresh(pair):
    engine, server = pair
    messages = [*GOLDEN[0], {"role": "assistant", "content": '{"queue": "bil'}]
    request = ask(messages, {"json": SCHEMA}, continue_final=True)
    async with httpx.AsyncClient(timeout=120) as client:
        vllm = HttpBackend(BackendInfo("model", server.name, "http"), server.base_url, client)
        assert_agree(await answer(engine, request), await answer(vllm, request), "continue_final_message")


@pytest.mark.parametrize("constraint", [
    {"regex": "("}, {"json": {"type": "objectx"}}, {"json": "{not json"}, {"grammar": "root ::= foo"},
    {"grammar": "   "}, {"choice": []}, {"json_object": False}, {"regex": "a\x00"}, {"structural_tag": "{}"},
], ids=lambda constraint: json.dumps(constraint)[:30])
async def test_what_vllm_refuses_the_local_engine_refuses(vllm_servers, local_teacher, constraint):
    server = vllm_servers.teacher
    request = ask(GOLDEN[0], constraint)
    async with httpx.AsyncClient(timeout=120) as client:
        vllm = HttpBackend(BackendInfo("teacher", server.name, "http"), server.base_url, client)
        with pytest.raises(UpstreamRejected) as refused:
            await answer(vllm, request)
    assert refused.value.status_code == 400
    with pytest.raises(InvalidRequest) as local:
        await answer(local_teacher, request)
    assert local.value.parameter.startswith("structured_outputs")


@pytest.fixture(scope="module")
def local_teacher(demo_dirs):
    engine = LocalEngine(EngineSettings(model_dir=demo_dirs[1], threads=1))
    yield engine
    engine.shutdown()
