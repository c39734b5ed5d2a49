"""The HTTP backend on vLLM's packed stream chunks, made certain: vLLM's own `stream_interval` (a request field in
vLLM 0.32) asks for 4 tokens per chunk, as a busy server packs them on its own. Each token keeps its id and its own
text (what vLLM reports for it in a plain-text stream), and the answer's end token is the one the divergence leaves
out; the chunk's text used to go to its last token, so a packed end token took the answer's last characters."""

from __future__ import annotations

import json

import httpx
import pytest

from distill.demo import task
from gateway.shadow.divergence import answer_tokens
from runtime.backends.http import HttpBackend
from runtime.contract import BackendInfo, Delta, Finish, GenerationRequest, SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]


class ExtraBodyFields(httpx.AsyncBaseTransport):
    """Adds vLLM request fields the gateway does not send (here `stream_interval`) to chat requests on their way."""

    def __init__(self, fields: dict):
        self._fields = fields
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/chat/completions"):
            body = json.loads(request.content) | self._fields
            headers = {key: value for key, value in request.headers.items() if key.lower() != "content-length"}
            request = httpx.Request("POST", request.url, headers=headers, json=body, extensions=request.extensions)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def generate(backend: HttpBackend, ticket: str, token_ids: bool) -> tuple[list[Delta], Finish]:
    request = GenerationRequest(f"chunks-{token_ids}", ({"role": "user", "content": ticket},),
                                SamplingParams(max_tokens=200, temperature=0.0, top_logprobs=2), token_ids=token_ids)
    deltas, finish = [], None
    async for event in backend.generate(request):
        if isinstance(event, Delta):
            deltas.append(event)
        else:
            finish = event
    return deltas, finish


async def test_tokens_packed_four_to_a_chunk_keep_their_own_ids_and_texts(vllm_servers):
    student = vllm_servers.student
    info = BackendInfo("student", student.name, "http")
    async with httpx.AsyncClient(timeout=120, transport=ExtraBodyFields({"stream_interval": 4})) as packing, \
            httpx.AsyncClient(timeout=120) as plain:
        packed_backend = HttpBackend(info, student.base_url, packing)
        plain_backend = HttpBackend(info, student.base_url, plain)
        for ticket in task.take("test", 3, seed=7):
            deltas, finish = await generate(packed_backend, ticket.text, token_ids=True)
            texts, _ = await generate(plain_backend, ticket.text, token_ids=False)
            tokens = [entry for delta in deltas for entry in delta.logprobs]
            answer = "".join(delta.text for delta in deltas)
            assert finish.finish_reason == "stop" and max(len(delta.logprobs) for delta in deltas) >= 4
            assert all(entry.token_id is not None for entry in tokens)
            # vLLM's own per-token texts, from a stream that asked for texts instead of ids
            assert [entry.token for entry in tokens] == [entry.token for delta in texts for entry in delta.logprobs]
            assert list(answer_tokens(tokens, answer)) == tokens[:-1]  # the end token alone falls outside the text
