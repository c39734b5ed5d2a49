"""A raw-prompt request through the HTTP backend: posted to the server's /v1/completions with the completions API's
names, its chunks read back into the same events the local engine gives for it (text, token ids, the sampled token
and the top k), over a real engine server."""

from __future__ import annotations

import httpx
import pytest

from runtime.backends.http import HttpBackend
from runtime.contract import BackendInfo, GenerationRequest, SamplingParams
from runtime.engine.engine import EngineSettings, LocalEngine
from tests.runtime.test_engine import run

PROMPT = "<|bos|><|user|>Hello, my SmartHub Pro from order 48213 will not turn on.<|end|><|assistant|>"
LOGPROB_TOLERANCE = 1e-5  # the same weights and kernels in two processes


def ask(request_id: str, token_ids: bool = False, **sampling) -> GenerationRequest:
    fields = {"max_tokens": 16, "temperature": 0.0, "top_logprobs": 2} | sampling
    return GenerationRequest(request_id, (), SamplingParams(**fields), token_ids=token_ids, prompt=PROMPT)


def backend(client: httpx.AsyncClient, base_url: str = "http://upstream/v1", model: str = "m") -> HttpBackend:
    return HttpBackend(BackendInfo("teacher", model, "http"), base_url, client)


async def test_the_body_is_the_completions_apis():
    async with httpx.AsyncClient() as client:
        body = backend(client)._completions_body(ask("b", token_ids=True, stop=("}",), top_k=3), stream=True)
        plain = backend(client)._completions_body(ask("p", top_logprobs=None), stream=False)
    assert body["prompt"] == PROMPT and body["logprobs"] == 2 and body["return_tokens_as_token_ids"] is True
    assert body["stop"] == ["}"] and body["top_k"] == 3 and body["stream_options"] == {"include_usage": True}
    assert not {"messages", "top_logprobs", "add_generation_prompt", "continue_final_message"} & set(body)
    assert "logprobs" not in plain and plain["stream"] is False


@pytest.fixture(scope="module")
def local_teacher(demo_dirs):
    engine = LocalEngine(EngineSettings(model_dir=demo_dirs[1], threads=1))
    yield engine
    engine.shutdown()


@pytest.mark.parametrize("token_ids", [False, True], ids=["texts", "token-ids"])
@pytest.mark.parametrize("sampling", [{}, {"temperature": 2.0, "seed": 5, "top_logprobs": 1}], ids=["greedy", "hot"])
async def test_a_server_behind_the_http_backend_completes_as_the_local_engine(engine_server, local_teacher,
                                                                              token_ids, sampling):
    async with httpx.AsyncClient(timeout=60) as client:
        remote = backend(client, engine_server.base_url, engine_server.model)
        over_http = await run(remote, ask("http", token_ids, **sampling))
    in_process = await run(local_teacher, ask("local", **sampling))
    assert over_http[0] == in_process[0]
    assert [entry.token for entry in over_http[1]] == [entry.token for entry in in_process[1]]
    assert over_http[2].completion_tokens == in_process[2].completion_tokens == len(in_process[1])
    assert over_http[2].prompt_tokens == in_process[2].prompt_tokens
    for remote_entry, local_entry in zip(over_http[1], in_process[1], strict=True):
        assert abs(remote_entry.logprob - local_entry.logprob) < LOGPROB_TOLERANCE
        if token_ids:
            assert remote_entry.token_id == local_entry.token_id
            assert [top.token_id for top in remote_entry.top_logprobs] == [
                top.token_id for top in local_entry.top_logprobs]
        else:
            assert [top.token for top in remote_entry.top_logprobs] == [top.token for top in local_entry.top_logprobs]
