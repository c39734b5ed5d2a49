"""`/v1/completions` on real vLLM (issue 26, item 5): the vLLM extensions kdgate speaks there are vLLM 0.32's
`CompletionRequest` fields; a raw prompt tokenizes and completes alike on vLLM and the local engine (tokens, prompt
length, raw logprobs, the sampled token and top k); the gateway's completions logprobs in front of vLLM are vLLM's
own, `text_offset` and `top_logprobs` dicts included; and the gateway in front of vLLM hands a completion off
mid-stream to the teacher, which continues the prompt plus the sent text."""

from __future__ import annotations

import json
import math
import subprocess

import httpx
import pytest

from gateway.app import create_app
from gateway.completions.fields import REQUEST_FIELDS
from runtime.backends.http import HttpBackend
from runtime.contract import BackendInfo, GenerationRequest, SamplingParams
from runtime.engine.engine import EngineSettings, LocalEngine
from tests.conftest import ThreadedServer
from tests.gateway.test_completions import skipped
from tests.runtime.test_engine import run
from tests.vllm.gateways import vllm_gateway_settings
from tests.vllm_servers import vllm_python

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]  # the first test may wait for both servers to start

PROMPTS = [
    "<|bos|><|user|>Hello, my SmartHub Pro from order 48213 will not turn on. This is urgent! Thanks, Maria<|end|>"
    "<|assistant|>",
    "<|bos|><|user|>The the the the<|end|><|assistant|>",
    "Order 58514 was charged twice",  # no template at all: a raw prompt is the model's whole input
]
HELD_OUT = ("<|bos|><|user|>Dear team, Order 35533 was a Plse Camera and order 24315 was a PhotoFrge. The Plse Camera "
            "makes a grinding noise. Last year order 11918 had the same problem. I have a Basic account. Thanks, James"
            "<|end|><|assistant|>")
LOGPROB_TOLERANCE = 1e-3


def test_kdgates_vllm_extensions_are_vllms_completion_fields():
    script = ("import json; from vllm.entrypoints.openai.completion.protocol import CompletionRequest; "
              "print(json.dumps(list(CompletionRequest.model_fields)))")
    done = subprocess.run([str(vllm_python()), "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    vllms = set(json.loads(done.stdout.strip().splitlines()[-1]))
    ours = {name for name, field in REQUEST_FIELDS.items() if field.origin == "vllm"}
    assert ours - vllms == set()


def ask(prompt: str, k: int = 2) -> GenerationRequest:
    return GenerationRequest("completion", (), SamplingParams(max_tokens=24, temperature=0.0, top_logprobs=k),
                             token_ids=True, prompt=prompt)


@pytest.mark.parametrize("role", ["student", "teacher"])
async def test_vllm_and_the_local_engine_complete_alike(vllm_servers, demo_dirs, role):
    server = getattr(vllm_servers, role)
    engine = LocalEngine(EngineSettings(model_dir=demo_dirs[0 if role == "student" else 1], threads=1))
    try:
        async with httpx.AsyncClient(timeout=120) as client:
            vllm = HttpBackend(BackendInfo(role, server.name, "http"), server.base_url, client)
            for prompt in PROMPTS:
                for k in (0, 3):
                    _, remote, remote_finish = await run(vllm, ask(prompt, k))
                    _, local, local_finish = await run(engine, ask(prompt, k))
                    assert [entry.token_id for entry in remote] == [entry.token_id for entry in local], prompt
                    assert (remote_finish.prompt_tokens, remote_finish.finish_reason) == (
                        local_finish.prompt_tokens, local_finish.finish_reason)
                    for theirs, ours in zip(remote, local, strict=True):
                        assert abs(theirs.logprob - ours.logprob) < LOGPROB_TOLERANCE
                        assert [top.token_id for top in theirs.top_logprobs] == [
                            top.token_id for top in ours.top_logprobs]
                        assert max(abs(a.logprob - b.logprob) for a, b in zip(
                            theirs.top_logprobs, ours.top_logprobs, strict=True)) < LOGPROB_TOLERANCE
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def vllm_gateway(vllm_servers, tmp_path_factory):
    settings = vllm_gateway_settings(vllm_servers, tmp_path_factory.mktemp("store") / "shadow.sqlite3")
    with ThreadedServer(create_app(settings)) as server:
        yield server


def test_the_gateways_completion_logprobs_are_vllms_own(vllm_gateway, vllm_servers):
    """Forced to the student, the gateway's completion equals what vLLM's own /v1/completions answers, in every
    logprobs list (kdgate builds them from the stream: offsets, dict keys and values must come out the same)."""
    body = {"prompt": PROMPTS[0], "max_tokens": 24, "temperature": 0, "logprobs": 3}
    ours = httpx.post(f"{vllm_gateway.url}/v1/completions", json=body | {"model": "kdgate-demo"},
                      headers={"x-kdgate-force": "student"}, timeout=120).json()["choices"][0]
    theirs = httpx.post(f"{vllm_servers.student.base_url}/completions",
                        json=body | {"model": vllm_servers.student.name}, timeout=120).json()["choices"][0]
    assert ours["text"] == theirs["text"] and ours["finish_reason"] == theirs["finish_reason"]
    mine, vllms = ours["logprobs"], theirs["logprobs"]
    assert mine["tokens"] == vllms["tokens"] and mine["text_offset"] == vllms["text_offset"]
    assert max(abs(a - b) for a, b in zip(mine["token_logprobs"], vllms["token_logprobs"], strict=True)) < 1e-6
    for top, their_top in zip(mine["top_logprobs"], vllms["top_logprobs"], strict=True):
        assert list(top) == list(their_top)
        assert max(abs(top[token] - their_top[token]) for token in top) < 1e-6


def test_a_completion_is_handed_off_to_the_vllm_teacher_mid_stream(vllm_gateway, vllm_servers):
    """deploy/kdgate-vllm.yaml's handoff (below p=0.9): the student's sure tokens, then the vLLM teacher's
    continuation of the prompt plus them, streamed as one completion; the shadow skips it, counted."""
    body = {"prompt": HELD_OUT, "max_tokens": 48, "temperature": 0}
    student = httpx.post(f"{vllm_gateway.url}/v1/completions", json=body | {"logprobs": 0},
                         headers={"x-kdgate-force": "student"}, timeout=120).json()["choices"][0]["logprobs"]
    cut = next(index for index, logprob in enumerate(student["token_logprobs"]) if logprob < math.log(0.9))
    assert cut > 0
    kept = "".join(student["tokens"][:cut])
    continued = httpx.post(f"{vllm_servers.teacher.base_url}/completions", timeout=120, json={
        "model": vllm_servers.teacher.name, "prompt": HELD_OUT + kept, "max_tokens": 48 - cut,
        "temperature": 0}).json()

    response = httpx.post(f"{vllm_gateway.url}/v1/completions", timeout=120, json=body | {
        "stream": True, "stream_options": {"include_usage": True}})
    chunks = [json.loads(line.removeprefix("data: ")) for line in response.text.split("\n\n")
              if line.startswith("data: ") and line != "data: [DONE]"]
    text = "".join(chunk["choices"][0]["text"] for chunk in chunks if chunk["choices"])
    assert text == kept + continued["choices"][0]["text"]
    assert chunks[-1]["kdgate"]["reason"] == "handoff" and chunks[-1]["kdgate"]["handed_off_tokens"] == cut
    assert chunks[-1]["usage"]["completion_tokens"] == cut + continued["usage"]["completion_tokens"]
    assert skipped(vllm_gateway.url) == {"escalation": 1.0}  # the forced requests above were never shadow work
