"""The local engine: vLLM-exact logprobs, continuous batching, seeded sampling, stop strings, cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from runtime.contract import Delta, GenerationRequest, SamplingParams
from runtime.engine.engine import EngineSettings, LocalEngine

PROMPTS = [
    "Hello, my SmartHub Pro from order 48213 will not turn on. This is urgent! Thanks, Maria",
    "I have two orders: 14321 for the pulse cam and 89060 for the Aero. The Aero keeps freezing.",
    "hi",
    "Order #58514: the SmartHub Pro charged me twice. Regards, Kofi Silva",
]


@pytest.fixture(scope="module")
def engine(demo_dirs):
    engine = LocalEngine(EngineSettings(model_dir=demo_dirs[0], threads=1))
    yield engine
    engine.shutdown()


def request(text: str, request_id: str, **sampling) -> GenerationRequest:
    params = {"max_tokens": 12, "temperature": 0.0, "top_logprobs": 5} | sampling
    return GenerationRequest(request_id, ({"role": "user", "content": text},), SamplingParams(**params))


async def run(engine: LocalEngine, generation: GenerationRequest):
    text, logprobs, finish = "", [], None
    async for event in engine.generate(generation):
        if isinstance(event, Delta):
            text += event.text
            logprobs.extend(event.logprobs)
        else:
            finish = event
    return text, logprobs, finish


def forward_logprobs(engine: LocalEngine, prompt_ids: list[int], generated: list[int]) -> torch.Tensor:
    """log-softmax at each generated position from one plain forward pass over prompt + answer. (T_gen, V)"""
    ids = torch.tensor([prompt_ids + generated])
    with torch.no_grad():
        logits = engine.model(ids).logits[0].float()
    return torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)


async def test_batched_logprobs_equal_a_plain_forward_pass(engine):
    generations = [request(text, f"lp{i}") for i, text in enumerate(PROMPTS)]
    results = await asyncio.gather(*(run(engine, g) for g in generations))
    for generation, (_, logprobs, finish) in zip(generations, results, strict=True):
        generated = [entry.token_id for entry in logprobs]
        assert len(generated) == finish.completion_tokens
        reference = forward_logprobs(engine, engine.encode_prompt(generation)[0], generated)
        reported = torch.tensor([entry.logprob for entry in logprobs])
        expected = reference.gather(1, torch.tensor(generated)[:, None]).squeeze(1)
        assert torch.allclose(reported, expected, atol=1e-4), (reported - expected).abs().max()
        for position, entry in enumerate(logprobs):
            top = reference[position].topk(5)
            assert [alt.token_id for alt in entry.top_logprobs] == top.indices.tolist()
            assert torch.allclose(torch.tensor([alt.logprob for alt in entry.top_logprobs]), top.values, atol=1e-4)


async def test_concurrent_requests_share_decode_steps(engine):
    first = asyncio.create_task(run(engine, request(PROMPTS[0], "share-a", max_tokens=24)))
    second = asyncio.create_task(run(engine, request(PROMPTS[1], "share-b", max_tokens=24)))
    await asyncio.gather(first, second)
    shared = [step for step, ids in engine.recent_steps if {"share-a", "share-b"} <= set(ids)]
    assert len(shared) >= 10, "both requests should be decoded in the same forward passes"


async def test_a_request_joins_a_running_batch(engine):
    long_one = engine.generate(request(PROMPTS[0], "join-long", max_tokens=40, ignore_eos=True))
    await anext(long_one)  # the long request is decoding now
    _, _, finish = await run(engine, request(PROMPTS[2], "join-late", max_tokens=8))
    async for _ in long_one:
        pass
    assert finish.completion_tokens >= 1
    steps = [ids for _, ids in engine.recent_steps if "join-late" in ids]
    assert steps and all("join-long" in ids for ids in steps[:3]), "the late request joined the running batch"


async def test_seeded_sampling_does_not_depend_on_batch_companions(engine):
    alone = await run(engine, request(PROMPTS[0], "seed-alone", temperature=1.0, top_p=0.9, seed=7, max_tokens=16))
    together = await asyncio.gather(
        run(engine, request(PROMPTS[0], "seed-batched", temperature=1.0, top_p=0.9, seed=7, max_tokens=16)),
        run(engine, request(PROMPTS[1], "seed-other", temperature=1.0, seed=8, max_tokens=16)),
    )
    assert alone[0] == together[0][0]
    assert [e.token_id for e in alone[1]] == [e.token_id for e in together[0][1]]


async def test_sampled_token_comes_first_in_top_logprobs_as_in_vllm(engine):
    _, logprobs, _ = await run(engine, request(PROMPTS[1], "vllm-order", temperature=2.0, seed=3, max_tokens=24,
                                               top_logprobs=3))
    for entry in logprobs:
        assert entry.top_logprobs[0].token_id == entry.token_id and len(entry.top_logprobs) == 3
        rest = [alt.logprob for alt in entry.top_logprobs[1:]]
        assert rest == sorted(rest, reverse=True)


@pytest.mark.parametrize("max_tokens", [1, 8])  # a longer answer lost them: they went only with a first-step Finish
async def test_prompt_logprobs_equal_a_plain_forward_pass(engine, max_tokens):
    generation = GenerationRequest("prompt-lp", ({"role": "user", "content": PROMPTS[0]},),
                                   SamplingParams(max_tokens=max_tokens, temperature=0.0), prompt_logprobs=3)
    _, _, finish = await run(engine, generation)
    assert finish.completion_tokens == max_tokens
    ids = list(finish.prompt_token_ids)
    assert finish.prompt_logprobs[0] is None and len(finish.prompt_logprobs) == len(ids)
    with torch.no_grad():
        reference = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0].float(), dim=-1)  # (T, V)
    for position in range(1, len(ids)):
        entries = finish.prompt_logprobs[position].entries
        actual, rank, _ = entries[ids[position]]
        assert abs(actual - reference[position - 1, ids[position]].item()) < 1e-4
        assert rank == int((reference[position - 1] > reference[position - 1, ids[position]]).sum()) + 1
        assert set(reference[position - 1].topk(3).indices.tolist()) <= set(entries)


async def test_stop_string_trims_text_and_keeps_logprobs_aligned(engine):
    full, _, _ = await run(engine, request(PROMPTS[0], "stop-full", max_tokens=30))
    stop = full[6:9]
    text, logprobs, finish = await run(engine, request(PROMPTS[0], "stop-cut", max_tokens=30, stop=(stop,)))
    assert text == full[: full.index(stop)]
    assert finish.finish_reason == "stop" and finish.stop_reason == stop
    assert "".join(entry.token for entry in logprobs).startswith(text + stop)  # the stop string's tokens too
    assert len(logprobs) == finish.completion_tokens  # every generated token has its logprob, as on vLLM


async def test_max_tokens_ends_with_length(engine):
    """With the end token ignored, only `max_tokens` can end the answer: exactly that many tokens, `length`."""
    _, logprobs, finish = await run(engine, request(PROMPTS[2], "length", max_tokens=3, top_logprobs=None,
                                                    ignore_eos=True))
    assert finish.finish_reason == "length" and finish.stop_reason is None
    assert finish.completion_tokens == 3 and logprobs == []


async def test_cancelled_request_leaves_the_batch(engine):
    stream = engine.generate(request(PROMPTS[0], "cancel-me", max_tokens=200, ignore_eos=True))
    await anext(stream)
    await stream.aclose()
    deadline = time.monotonic() + 5
    while engine.stats()["running"] and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert engine.stats()["running"] == 0
    decoded_steps = sum("cancel-me" in ids for _, ids in engine.recent_steps)
    assert decoded_steps < 20, f"a cancelled request kept decoding for {decoded_steps} steps (asked for 200)"
