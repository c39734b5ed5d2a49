"""vLLM's completions `top_logprobs` for `logprobs: k`, cut from a longer list: routing may ask the backend for
more alternatives than the client (a hold-back policy's k, the shadow's), and the client must get what the backend
would have given for its own k. Checked against the local engine itself, sampling hot so that sampled tokens fall
outside the top k often."""

from __future__ import annotations

import pytest

from gateway.completions.serving import completion_top
from runtime.contract import GenerationRequest, SamplingParams
from runtime.engine.engine import EngineSettings, LocalEngine
from tests.runtime.test_engine import run

PROMPT = "<|bos|><|user|>The the the the<|end|><|assistant|>"


@pytest.fixture(scope="module")
def engine(demo_dirs):
    engine = LocalEngine(EngineSettings(model_dir=demo_dirs[0], threads=1))
    yield engine
    engine.shutdown()


def entries(engine: LocalEngine, k: int, seed: int):
    sampling = SamplingParams(max_tokens=24, temperature=2.0, seed=seed, top_logprobs=k)
    return run(engine, GenerationRequest(f"k{k}-{seed}", (), sampling, prompt=PROMPT))


def listed(tops) -> list[tuple[int, float]]:
    return [(top.token_id, top.logprob) for top in tops]


@pytest.mark.parametrize(("k", "asked"), [(0, 3), (1, 3), (2, 5), (3, 3)])
async def test_the_cut_gives_what_the_engine_gives_for_the_clients_k(engine, k, asked):
    outside = 0
    for seed in range(4):
        _, wide, _ = await entries(engine, asked, seed)
        _, exact, _ = await entries(engine, k, seed)
        assert [entry.token_id for entry in wide] == [entry.token_id for entry in exact]  # logprobs do not sample
        for many, few in zip(wide, exact, strict=True):
            assert listed(completion_top(many, k)) == listed(few.top_logprobs)
            outside += len(few.top_logprobs) == k + 1
    assert k == 0 or outside > 0  # the sampled token fell outside the top k somewhere: both cuts were checked


async def test_the_list_is_the_sampled_token_and_the_whole_top_k(engine):
    _, logprobs, _ = await entries(engine, 2, 0)
    for entry in logprobs:
        assert entry.top_logprobs[0].token_id == entry.token_id
        assert len(entry.top_logprobs) in (2, 3)
