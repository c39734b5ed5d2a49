"""The HTTP backend against a real `kdgate engine` server on loopback (vLLM's protocol, a real peer)."""

from __future__ import annotations

import httpx
import pytest

from runtime.backends.http import HttpBackend
from runtime.contract import BackendInfo, Delta, Finish, GenerationRequest, SamplingParams
from runtime.engine.engine import EngineSettings, LocalEngine
from runtime.errors import UpstreamRejected, UpstreamUnavailable
from tests.conftest import free_port

TICKET = "I have two orders: 14321 for the pulse cam and 89060 for the Aero. The Aero keeps freezing. Thanks, Mei"


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0)) as client:
        yield client


@pytest.fixture
def backend(engine_server, client) -> HttpBackend:
    return HttpBackend(BackendInfo("teacher", engine_server.model, "http"), engine_server.base_url, client)


@pytest.fixture(scope="module")
def local_teacher(demo_dirs):
    engine = LocalEngine(EngineSettings(model_dir=demo_dirs[1], threads=1))
    yield engine
    engine.shutdown()


def greedy(request_id: str, **extra) -> GenerationRequest:
    sampling = SamplingParams(max_tokens=16, temperature=0.0, top_logprobs=4)
    return GenerationRequest(request_id, ({"role": "user", "content": TICKET},), sampling, **extra)


async def collect(events):
    text, logprobs, finish = "", [], None
    async for event in events:
        if isinstance(event, Delta):
            text += event.text
            logprobs += event.logprobs
        elif isinstance(event, Finish):
            finish = event
    return text, logprobs, finish


async def test_http_backend_streams_what_the_engine_generates(backend, local_teacher):
    remote_text, remote_logprobs, remote_finish = await collect(backend.generate(greedy("http-1")))
    local_text, local_logprobs, local_finish = await collect(local_teacher.generate(greedy("local-1")))
    assert remote_text == local_text
    assert (remote_finish.prompt_tokens, remote_finish.completion_tokens) == (local_finish.prompt_tokens,
                                                                              local_finish.completion_tokens)
    assert [e.token for e in remote_logprobs] == [e.token for e in local_logprobs]
    for remote, local in zip(remote_logprobs, local_logprobs, strict=True):
        assert abs(remote.logprob - local.logprob) < 1e-4
        assert [t.token for t in remote.top_logprobs] == [t.token for t in local.top_logprobs]


async def test_score_answer_over_http_equals_teacher_forcing(backend, local_teacher):
    answer = '{"queue": "tech-support", "priority": "P3", "reply": "Hi Mei, thanks"}'
    scored = await backend.score([{"role": "user", "content": TICKET}], answer, top_logprobs=5)
    assert "".join(token.token for token in scored.tokens) == answer
    tokenizer = local_teacher.tokenizer
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": TICKET}], add_generation_prompt=True,
                                           tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert scored.prompt_tokens == len(prompt_ids)
    import torch

    with torch.no_grad():
        logits = local_teacher.model(torch.tensor([prompt_ids + answer_ids])).logits[0].float()
    reference = torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)  # (T_answer, V)
    for position, (token_id, entry) in enumerate(zip(answer_ids, scored.tokens, strict=True)):
        assert entry.token_id == token_id
        assert abs(entry.logprob - reference[position, token_id].item()) < 1e-4
        assert entry.top_logprobs[0].token_id == token_id and len(entry.top_logprobs) == 5


async def test_score_answer_is_the_same_on_both_backends(backend, local_teacher):
    from runtime.backends.local import LocalBackend

    local = LocalBackend.__new__(LocalBackend)  # reuse the module's engine instead of loading a second copy
    local.engine, local.info = local_teacher, BackendInfo("teacher", "demo-teacher", "local")
    messages = [{"role": "user", "content": TICKET}]
    answer = "Hi Mei, order 89060"
    remote = await backend.score(messages, answer, top_logprobs=3)
    in_process = await local.score(messages, answer, top_logprobs=3)
    assert [t.token_id for t in remote.tokens] == [t.token_id for t in in_process.tokens]
    assert abs(remote.total_logprob - in_process.total_logprob) < 1e-3


async def test_upstream_400_is_passed_on_with_its_message(backend):
    too_long = GenerationRequest("too-long", ({"role": "user", "content": TICKET},),
                                 SamplingParams(max_tokens=4000, temperature=0.0))
    with pytest.raises(UpstreamRejected) as caught:
        await collect(backend.generate(too_long))
    assert caught.value.status_code == 400 and "context length" in caught.value.message


async def test_wrong_model_name_is_the_backends_failure_said_clearly(engine_server, client):
    """The gateway names the model it asks a backend for, so a 404 is the deployment's fault, not the client's: it is
    served around (another backend answers), never passed on as the client's 404."""
    backend = HttpBackend(BackendInfo("teacher", "no-such-model", "http"), engine_server.base_url, client)
    with pytest.raises(UpstreamUnavailable, match=r"does not serve model `no-such-model` \(HTTP 404"):
        await collect(backend.generate(greedy("wrong-model")))
    with pytest.raises(UpstreamUnavailable, match="does not serve model `no-such-model`"):
        await backend.check_ready()


async def test_server_that_is_down_is_unavailable(client):
    backend = HttpBackend(BackendInfo("teacher", "m", "http"), f"http://127.0.0.1:{free_port()}/v1", client)
    with pytest.raises(UpstreamUnavailable, match="unreachable"):
        await collect(backend.generate(greedy("down")))
    with pytest.raises(UpstreamUnavailable):
        await backend.check_ready()


async def test_token_ids_come_through_vllm_token_id_strings(backend, local_teacher):
    """`return_tokens_as_token_ids`: the server writes `token_id:<id>`, the backend parses the ids back, and each
    sampled token's text comes back from its `bytes` (vLLM's decoded token), so the texts spell the answer."""
    remote_text, remote, _ = await collect(backend.generate(greedy("ids-http", token_ids=True)))
    local_text, local, _ = await collect(local_teacher.generate(greedy("ids-local")))
    assert [entry.token_id for entry in remote] == [entry.token_id for entry in local]
    assert remote_text == local_text and "".join(entry.token for entry in remote) == remote_text
    assert [entry.token for entry in remote] == [entry.token for entry in local]
    assert [[top.token_id for top in entry.top_logprobs] for entry in remote] == \
        [[top.token_id for top in entry.top_logprobs] for entry in local]
    _, plain, _ = await collect(backend.generate(greedy("plain-http")))
    assert all(entry.token_id is None and not entry.token.startswith("token_id:") for entry in plain)


async def test_streams_read_to_the_end_keep_their_upstream_connection(engine_server):
    """After `[DONE]` the rest of the body is read, so the pooled connection is reused: one TCP handshake for
    several requests, not one each (each costs TTFT and gateway CPU)."""
    connects = []

    async def trace(event: str, info: dict) -> None:
        if event == "connection.connect_tcp.complete":
            connects.append(event)

    async def add_trace(request: httpx.Request) -> None:
        request.extensions["trace"] = trace

    async with httpx.AsyncClient(timeout=30.0, event_hooks={"request": [add_trace]}) as client:
        backend = HttpBackend(BackendInfo("teacher", engine_server.model, "http"), engine_server.base_url, client)
        for index in range(4):
            text, _, finish = await collect(backend.generate(greedy(f"reuse-{index}")))
            assert text and finish is not None
    assert len(connects) == 1


# One chunk of vLLM 0.32's stream (`stream_interval: 4`, `top_logprobs: 2`, `return_tokens_as_token_ids`), as sent:
# the sampled tokens' `bytes` are their decoded texts, the alternatives' `bytes` spell the placeholder.
VLLM_PACKED_CHUNK = {"index": 0, "delta": {"content": 'queue": "billing'}, "finish_reason": None,
                     "token_ids": [343, 272, 265, 512], "logprobs": {"content": [
                         {"token": f"token_id:{token_id}", "logprob": -0.01, "bytes": list(text.encode()),
                          "top_logprobs": [{"token": f"token_id:{token_id}", "logprob": -0.01,
                                            "bytes": list(f"token_id:{token_id}".encode())},
                                           {"token": "token_id:7", "logprob": -9.0,
                                            "bytes": list(b"token_id:7")}]}
                         for token_id, text in ((343, "queue"), (272, '":'), (265, ' "'), (512, "billing"))]}}


def test_each_token_of_a_packed_vllm_chunk_keeps_its_own_text():
    """A busy vLLM sends several tokens in one chunk: each keeps its text, none gets the chunk's (the last token
    used to get all of it, and the others nothing)."""
    backend = HttpBackend(BackendInfo("student", "m", "http"), "http://unused/v1", client=None)
    delta = backend._delta_of(VLLM_PACKED_CHUNK)
    assert delta.text == 'queue": "billing'
    assert [(entry.token_id, entry.token) for entry in delta.logprobs] == \
        [(343, "queue"), (272, '":'), (265, ' "'), (512, "billing")]
    assert all([(top.token_id, top.token) for top in entry.top_logprobs] == [(entry.token_id, ""), (7, "")]
               for entry in delta.logprobs)  # alternatives' texts are not sent


def test_a_packed_chunk_without_token_texts_gives_no_token_the_chunks_text(caplog):
    """A server that packs `token_id:<id>` tokens without their texts (no `bytes`): their texts are unknown, left
    empty, and said once; the chunk's text is given to no token. One token alone in its chunk gets the chunk's text."""
    backend = HttpBackend(BackendInfo("student", "m", "http"), "http://unused/v1", client=None)
    textless = {**VLLM_PACKED_CHUNK, "logprobs": {"content": [
        {key: value for key, value in item.items() if key != "bytes"}
        for item in VLLM_PACKED_CHUNK["logprobs"]["content"]]}}
    with caplog.at_level("WARNING", logger="runtime.backends.http"):
        first = backend._delta_of(textless)
        backend._delta_of(textless)
    assert [entry.token for entry in first.logprobs] == ["", "", "", ""]
    assert len([record for record in caplog.records if "without their texts" in record.message]) == 1
    alone = {**textless, "delta": {"content": "queue"},
             "logprobs": {"content": textless["logprobs"]["content"][:1]}}
    assert [entry.token for entry in backend._delta_of(alone).logprobs] == ["queue"]


async def test_a_packing_server_keeps_each_tokens_text_and_the_end_token_falls_outside_the_answer(
        packed_engine, client, demo_dirs):
    """The project's engine packing 4 tokens per chunk, as a busy vLLM does: ids and texts per token are those the
    engine generated in-process, and the answer's end token, packed with the answer's last tokens, is the one token
    the divergence leaves out (it used to carry the last chunk's text, so nothing was left out: unaligned, no KL)."""
    from gateway.shadow.divergence import answer_tokens

    backend = HttpBackend(BackendInfo("student", packed_engine.served, "http"), f"{packed_engine.url}/v1", client)
    request = GenerationRequest("packed", ({"role": "user", "content": TICKET},),
                                SamplingParams(max_tokens=200, temperature=0.0, top_logprobs=2), token_ids=True)
    deltas, finish = [], None
    async for event in backend.generate(request):
        if isinstance(event, Delta):
            deltas.append(event)
        else:
            finish = event
    tokens = [entry for delta in deltas for entry in delta.logprobs]
    text = "".join(delta.text for delta in deltas)
    assert finish.finish_reason == "stop" and max(len(delta.logprobs) for delta in deltas) > 1
    (engine_backend,) = packed_engine.app.state.chat.router.backends.values()
    engine = engine_backend.engine
    assert [entry.token for entry in tokens] == [engine.texts(entry.token_id) for entry in tokens]
    assert "".join(entry.token for entry in tokens[:-1]) == text
    assert list(answer_tokens(tokens, text)) == tokens[:-1]  # the end token alone is left out
