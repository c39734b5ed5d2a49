"""The local engine's sampling fields, with vLLM's meaning: `logit_bias` and the penalties change the logits greedy
decoding and sampling start from; `min_p` and `top_k` narrow what sampling draws from; `stop_token_ids` end the
answer; the logprobs a request gets stay the raw model's (issue 26)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.contract import GenerationRequest, SamplingParams
from runtime.engine.engine import EngineSettings, LocalEngine
from runtime.engine.sampling import RowSampling, make_generator, processed_logits, sample_next
from runtime.errors import InvalidRequest
from tests.runtime.test_engine import forward_logprobs, run

V = 12
REPETITIVE = "The the the the"  # the demo models are unsure of this one: penalties of 1-2 change its answer


def params(**fields) -> SamplingParams:
    return SamplingParams(max_tokens=1, **fields)


logits_strategy = st.lists(st.floats(-30, 30, width=32), min_size=V, max_size=V).map(torch.tensor)
ids_strategy = st.lists(st.integers(0, V - 1), max_size=8)


@given(logits_strategy, ids_strategy, ids_strategy)
@settings(max_examples=50, deadline=None)
def test_default_parameters_leave_the_logits_as_they_are(raw, prompt, output):
    assert torch.equal(processed_logits(raw, params(), prompt, output), raw)


def test_logit_bias_is_added_to_the_named_tokens_only():
    raw = torch.linspace(-3, 3, V)
    biased = processed_logits(raw, params(logit_bias=((2, 5.0), (7, -100.0))), [], [])
    assert biased[2] == raw[2] + 5.0 and biased[7] == raw[7] - 100.0
    others = [token for token in range(V) if token not in (2, 7)]
    assert torch.equal(biased[others], raw[others])


@given(logits_strategy, ids_strategy, ids_strategy, st.floats(0.1, 10.0))
@settings(max_examples=100, deadline=None)
def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens(raw, prompt, output,
                                                                                           penalty):
    """vLLM's rule over the prompt *and* the answer: a positive logit is divided by the penalty, a negative one
    multiplied by it; tokens seen in neither keep their logit."""
    penalised = processed_logits(raw, params(repetition_penalty=penalty), prompt, output)
    factor = torch.tensor(penalty, dtype=torch.float32)
    for token in range(V):
        if token in prompt or token in output:
            expected = raw[token] * (1.0 / factor) if raw[token] > 0 else raw[token] * factor
            assert penalised[token] == expected
        else:
            assert penalised[token] == raw[token]


@given(logits_strategy, ids_strategy, ids_strategy, st.floats(-2, 2), st.floats(-2, 2))
@settings(max_examples=100, deadline=None)
def test_frequency_penalty_counts_each_occurrence_and_presence_penalty_counts_once(raw, prompt, output, frequency,
                                                                                   presence):
    """Both look at the generated tokens only (the prompt's do not count), as OpenAI defines them."""
    penalised = processed_logits(raw, params(frequency_penalty=frequency, presence_penalty=presence), prompt, output)
    for token in range(V):
        count = output.count(token)
        expected = raw[token] - torch.tensor(frequency) * count - torch.tensor(presence) * (count > 0)
        assert torch.isclose(penalised[token], expected, atol=1e-5)


def test_bias_and_penalties_decide_the_greedy_token():
    raw = torch.tensor([[5.0, 4.0, 1.0, 0.0]])
    assert sample_next(raw, [RowSampling(params(temperature=0.0))]).tolist() == [0]
    assert sample_next(raw, [RowSampling(params(temperature=0.0, logit_bias=((0, -2.0),)))]).tolist() == [1]
    assert sample_next(raw, [RowSampling(params(temperature=0.0, presence_penalty=2.0), output_ids=[0])]).tolist() \
        == [1]
    assert sample_next(raw, [RowSampling(params(temperature=0.0, repetition_penalty=2.0), prompt_ids=[0])]).tolist() \
        == [1]


def draws(logits: torch.Tensor, sampling: SamplingParams, count: int = 300) -> set[int]:
    return {int(sample_next(logits[None], [RowSampling(sampling, generator=make_generator(seed, logits.device))])[0])
            for seed in range(count)}


def test_min_p_draws_only_tokens_near_the_most_likely_one():
    logits = torch.tensor([2.0, 1.9, 1.0, 0.5, 0.0, -0.5])
    probs = torch.softmax(logits, dim=-1)
    assert draws(logits, params(temperature=1.0)) == set(range(6))  # without it, every token comes up
    kept = {token for token in range(6) if probs[token] >= 0.5 * probs.max()}
    assert draws(logits, params(temperature=1.0, min_p=0.5)) == kept == {0, 1}
    assert draws(logits, params(temperature=2.0, min_p=1.0)) == {0}


def test_top_k_draws_only_among_the_k_most_likely():
    logits = torch.tensor([0.0, 2.0, 1.9, 1.0, 0.5, -0.5])
    assert draws(logits, params(temperature=1.0, top_k=2)) == {1, 2}
    assert draws(logits, params(temperature=1.0, top_k=1)) == {1}
    assert draws(logits, params(temperature=1.0, top_k=100)) == set(range(6))  # beyond the vocabulary: all kept


def test_a_seeded_draw_with_no_new_field_is_what_it_was():
    """The sampling fields change nothing when left at their defaults: a seeded draw is the same tokens as the
    engine drew before they existed (softmax at the temperature, top-p, then one multinomial draw)."""
    logits = torch.randn(V, generator=torch.Generator().manual_seed(3))
    for seed in range(20):
        before = torch.multinomial(torch.softmax(logits / 0.7, dim=-1), 1, generator=make_generator(seed, "cpu"))
        now = sample_next(logits[None], [RowSampling(params(temperature=0.7), generator=make_generator(seed, "cpu"))])
        assert now.tolist() == before.tolist()


# ------------------------------------------------------------------------------------------- the engine itself


@pytest.fixture(scope="module")
def engine(demo_dirs):
    engine = LocalEngine(EngineSettings(model_dir=demo_dirs[0], threads=1))
    yield engine
    engine.shutdown()


def ask(text: str, request_id: str, **sampling) -> GenerationRequest:
    fields = {"max_tokens": 16, "temperature": 0.0, "top_logprobs": 2} | sampling
    return GenerationRequest(request_id, ({"role": "user", "content": text},), SamplingParams(**fields))


async def test_stop_token_ids_end_the_answer_without_the_tokens_text(engine):
    text, logprobs, _ = await run(engine, ask(REPETITIVE, "base"))
    ids = [entry.token_id for entry in logprobs]
    at = next(index for index in range(2, len(ids)) if ids[index] not in ids[:index])  # its first appearance
    stopped, stopped_logprobs, finish = await run(engine, ask(REPETITIVE, "stopped", stop_token_ids=(ids[at],)))
    assert finish.finish_reason == "stop" and finish.stop_reason == ids[at]
    assert finish.completion_tokens == at + 1 and len(stopped_logprobs) == at + 1  # as vLLM: counted, logprob given
    assert stopped == "".join(entry.token for entry in logprobs[:at]) and text.startswith(stopped)


async def test_logprobs_stay_the_raw_models_under_a_bias(engine):
    """A token forced by `logit_bias` is reported with the probability the model itself gave it (vLLM's default
    raw logprobs), not the ~1 it had after the bias: routing and shadow scoring see the model's confidence."""
    _, logprobs, _ = await run(engine, ask(REPETITIVE, "free", max_tokens=1, top_logprobs=5))
    forced = logprobs[0].top_logprobs[3].token_id  # the 4th most likely first token
    generation = ask(REPETITIVE, "forced", max_tokens=1, top_logprobs=5, logit_bias=((forced, 100.0),))
    _, forced_logprobs, _ = await run(engine, generation)
    assert forced_logprobs[0].token_id == forced
    raw = forward_logprobs(engine, engine.encode_prompt(generation)[0], [forced])[0]  # (V,)
    assert forced_logprobs[0].logprob == pytest.approx(raw[forced].item(), abs=1e-4)
    assert forced_logprobs[0].logprob < logprobs[0].logprob  # below the greedy token's: not the biased ~0
    assert [top.token_id for top in forced_logprobs[0].top_logprobs[1:4]] == \
        [top.token_id for top in logprobs[0].top_logprobs[:3]]  # the alternatives are the raw ranking too


async def test_presence_and_frequency_penalties_look_at_generated_tokens_only(engine):
    """They change the repetitive answer, but never its first token (nothing is generated yet), while the
    repetition penalty also counts the prompt's tokens."""
    base, base_logprobs, _ = await run(engine, ask(REPETITIVE, "base"))
    for name in ("presence_penalty", "frequency_penalty"):
        penalised, logprobs, _ = await run(engine, ask(REPETITIVE, name, **{name: 2.0}))
        assert penalised != base, name
        assert logprobs[0].token_id == base_logprobs[0].token_id, name
    repeated, _, _ = await run(engine, ask(REPETITIVE, "repetition", repetition_penalty=1.5))
    assert repeated != base


@pytest.mark.parametrize("field", ["logit_bias", "stop_token_ids"])
async def test_token_ids_outside_the_vocabulary_are_refused_by_name(engine, field):
    value = ((engine.vocab_size, 1.0),) if field == "logit_bias" else (engine.vocab_size,)
    with pytest.raises(InvalidRequest) as refused:
        await run(engine, ask(REPETITIVE, "outside", **{field: value}))
    assert refused.value.parameter == field and str(engine.vocab_size) in refused.value.message
