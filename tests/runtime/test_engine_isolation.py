"""One request's sampling parameters can fail only that request: the engine finishes every other sequence in the
batch with its correct answer, and a failure fails exactly the sequences it belongs to — prefilling ones
included — so that nothing waits for an answer that never comes."""

from __future__ import annotations

import asyncio

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.contract import Delta, GenerationRequest, SamplingParams
from runtime.engine.engine import EngineSettings, LocalEngine
from runtime.engine.sampling import RowSampling, sample_next
from runtime.errors import GatewayError
from tests.runtime.test_engine import PROMPTS, run

DEADLINE_S = 30  # a request that has not finished by then is hanging


@pytest.fixture(scope="module")
def engine(demo_dirs):
    engine = LocalEngine(EngineSettings(model_dir=demo_dirs[0], threads=1))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def greedy_answers(engine):
    """Each innocent prompt's greedy answer, decoded alone."""
    return [asyncio.run(run(engine, greedy(text, f"alone-{i}")))[0] for i, text in enumerate(PROMPTS)]


def greedy(text: str, request_id: str) -> GenerationRequest:
    return GenerationRequest(request_id, ({"role": "user", "content": text},),
                             SamplingParams(max_tokens=16, temperature=0.0, top_logprobs=2))


async def beside_innocents(engine: LocalEngine, odd: GenerationRequest) -> tuple[object, list[str]]:
    """Run `odd` concurrently with one greedy request per prompt; the odd one's outcome and the innocents' texts."""
    innocents = [run(engine, greedy(text, f"innocent-{i}")) for i, text in enumerate(PROMPTS)]
    outcomes = await asyncio.wait_for(asyncio.gather(run(engine, odd), *innocents, return_exceptions=True),
                                      timeout=DEADLINE_S)
    return outcomes[0], [outcome[0] if isinstance(outcome, tuple) else outcome for outcome in outcomes[1:]]


def test_a_vanishing_top_p_keeps_the_most_likely_token():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    for top_p in (7e-46, 5e-324, 1e-12):  # below float32's smallest positive number: it becomes 0 on the tensor
        chosen = sample_next(logits, [RowSampling(SamplingParams(max_tokens=1, temperature=1.0, top_p=top_p))])
        assert chosen.tolist() == [0]


async def test_a_vanishing_top_p_does_not_break_the_batch(engine, greedy_answers):
    odd = GenerationRequest("odd", ({"role": "user", "content": PROMPTS[1]},),
                            SamplingParams(max_tokens=16, temperature=1.0, top_p=7e-46))
    outcome, innocents = await beside_innocents(engine, odd)
    assert innocents == greedy_answers
    assert isinstance(outcome, tuple)  # the odd request is answered too (top_p that small is greedy)


def inject_one_prefill_fault(engine: LocalEngine, monkeypatch) -> dict:
    """The next prefill forward pass raises; `running_then` says how many sequences were decoding when it did."""
    real_forward = engine.model.forward
    broken = {"left": 1, "running_then": None, "real_forward": real_forward}

    def forward_failing_once(*args, **kwargs):
        if broken["left"] and kwargs.get("use_cache") and kwargs.get("logits_to_keep") is not None:
            broken["left"] -= 1
            broken["running_then"] = engine.stats()["running"]
            raise RuntimeError("injected prefill fault")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", forward_failing_once)
    return broken


async def test_a_failing_prefill_fails_its_own_sequences_and_the_engine_keeps_serving(engine, greedy_answers,
                                                                                       monkeypatch):
    """A step that raises while requests are being prefilled fails those requests (it used to leave them waiting
    forever), and the engine keeps serving."""
    broken = inject_one_prefill_fault(engine, monkeypatch)
    victim = asyncio.create_task(run(engine, greedy(PROMPTS[0], "victim")))
    with pytest.raises(GatewayError, match="injected prefill fault"):
        await asyncio.wait_for(victim, timeout=DEADLINE_S)
    assert broken["left"] == 0
    monkeypatch.setattr(engine.model, "forward", broken["real_forward"])
    text, _, finish = await asyncio.wait_for(run(engine, greedy(PROMPTS[0], "after")), timeout=DEADLINE_S)
    assert text == greedy_answers[0] and finish.finish_reason in ("stop", "length")


def innocent(request_id: str) -> GenerationRequest:
    """A greedy request long enough (end token ignored) to be still decoding when another one's prefill fails."""
    return GenerationRequest(request_id, ({"role": "user", "content": PROMPTS[1]},),
                             SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True))


async def test_a_failing_prefill_fails_nothing_that_was_already_decoding(engine, monkeypatch):
    """A request that is decoding when another request's prefill fails finishes with its own greedy answer."""
    reference, _, _ = await asyncio.wait_for(run(engine, innocent("innocent-alone")), timeout=DEADLINE_S)
    decoding = engine.generate(innocent("innocent-during"))
    first = await asyncio.wait_for(anext(decoding), timeout=DEADLINE_S)  # prefilled: it is in the running batch
    broken = inject_one_prefill_fault(engine, monkeypatch)
    victim = asyncio.create_task(run(engine, greedy(PROMPTS[0], "victim")))
    text, finish = first.text, None
    try:
        async for event in decoding:
            if isinstance(event, Delta):
                text += event.text
            else:
                finish = event
    except GatewayError as error:
        text = error  # failed by a fault that was not its own
    with pytest.raises(GatewayError, match="injected prefill fault"):
        await asyncio.wait_for(victim, timeout=DEADLINE_S)
    assert broken["left"] == 0 and broken["running_then"] == 1, broken  # the fault hit while it was decoding
    assert text == reference and finish.finish_reason == "length", text


finite_or_tiny = st.one_of(st.floats(min_value=0.0, max_value=2.0), st.sampled_from([0.0, 1e-30, 1e-6, 1e-5, 2.0]))
top_ps = st.one_of(st.floats(min_value=5e-324, max_value=1.0, exclude_min=False),
                   st.sampled_from([5e-324, 7e-46, 1e-38, 1e-7, 1.0]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(temperature=finite_or_tiny, top_p=top_ps, seed=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
       top_logprobs=st.one_of(st.none(), st.integers(0, 20)), max_tokens=st.integers(1, 24),
       stop=st.lists(st.text(min_size=1, max_size=3), max_size=4))
def test_random_sampling_parameters_never_touch_innocent_requests(engine, greedy_answers, temperature, top_p, seed,
                                                                 top_logprobs, max_tokens, stop):
    odd = GenerationRequest("odd", ({"role": "user", "content": PROMPTS[2]},),
                            SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                           top_logprobs=top_logprobs, stop=tuple(stop)))
    outcome, innocents = asyncio.run(beside_innocents(engine, odd))
    assert innocents == greedy_answers
    assert isinstance(outcome, tuple | GatewayError), outcome  # answered, or failed cleanly on its own
