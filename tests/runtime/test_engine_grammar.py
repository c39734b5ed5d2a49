"""The local engine under `structured_outputs` (runtime/engine/grammar.py): every constraint holds on the demo
tickets, the logprobs are the masked distribution's (vLLM's), a bad constraint is a 400 naming its field, and a
grammar changes nothing for the requests that share its batch, nor for the other sampling fields' meaning."""

from __future__ import annotations

import asyncio
import json
import math
import re

import jsonschema_rs
import pytest
import torch
import xgrammar

from distill.demo import catalog
from runtime.contract import GenerationRequest, SamplingParams
from runtime.demo import ARTIFACTS_DIR
from runtime.engine import grammar
from runtime.engine.engine import EngineSettings, LocalEngine
from runtime.engine.grammar import SequenceGrammar, mask_logits
from runtime.engine.structured_outputs import grammar_spec
from runtime.errors import InvalidRequest
from tests.runtime.test_engine import forward_logprobs, run

SCHEMA = {  # the demo's answer, as a client would constrain it
    "type": "object",
    "properties": {"queue": {"enum": list(catalog.QUEUES)}, "priority": {"enum": list(catalog.PRIORITIES)},
                   "reply": {"type": "string"}},
    "required": ["queue", "priority", "reply"], "additionalProperties": False,
}
QUEUE_AND_PRIORITY = f"({'|'.join(catalog.QUEUES)}) P[1-4]"
TICKETS = [json.loads(line)["messages"] for line in (ARTIFACTS_DIR / "golden.jsonl").read_text().splitlines()[:4]]


@pytest.fixture(scope="module")
def engine(demo_dirs):
    engine = LocalEngine(EngineSettings(model_dir=demo_dirs[0], threads=1))
    yield engine
    engine.shutdown()


def ask(messages, constraint: dict | None, request_id: str = "g", **sampling) -> GenerationRequest:
    params = {"max_tokens": 96, "temperature": 0.0, "top_logprobs": 5} | sampling
    return GenerationRequest(request_id, tuple(messages), SamplingParams(**params), structured_outputs=constraint)


def holds(kind: str, text: str) -> bool:
    return {
        "json": lambda: jsonschema_rs.is_valid(SCHEMA, json.loads(text)),
        "json_object": lambda: isinstance(json.loads(text), dict),
        "regex": lambda: re.fullmatch(QUEUE_AND_PRIORITY, text) is not None,
        "choice": lambda: text in catalog.QUEUES,
        "grammar": lambda: re.fullmatch(r"P[1-4]", text) is not None,
        "lark": lambda: re.fullmatch(r"(low|high) P[1-4]", text) is not None,
    }[kind]()


CONSTRAINTS = {
    "json": {"json": SCHEMA},
    "json_object": {"json_object": True},
    "regex": {"regex": QUEUE_AND_PRIORITY},
    "choice": {"choice": list(catalog.QUEUES)},
    "grammar": {"grammar": 'root ::= "P" [1-4]'},
    "lark": {"grammar": 'start: LEVEL " " "P" /[1-4]/\nLEVEL: "low" | "high"'},
}


@pytest.mark.parametrize("kind", list(CONSTRAINTS))
async def test_each_constraint_holds_on_the_golden_tickets(engine, kind):
    for index, messages in enumerate(TICKETS):
        text, logprobs, finish = await run(engine, ask(messages, CONSTRAINTS[kind], f"{kind}-{index}"))
        assert holds(kind, text), (kind, text)
        assert finish.finish_reason == "stop" and finish.stop_reason is None
        assert logprobs[-1].token_id in engine.eos_ids  # the grammar let the end token through only here
        assert logprobs[-1].logprob == 0.0  # nothing else was allowed at the end


def allowed_tokens(engine: LocalEngine, constraint: dict, generated: list[int]) -> list[torch.Tensor]:
    """The grammar's allowed set before each generated token, from a fresh matcher replaying them. [(V,) bool]"""
    grammar = engine.grammars.matcher_for(grammar_spec(constraint))
    vocab = torch.arange(engine.vocab_size)
    sets = []
    for token in generated:
        bitmask = xgrammar.allocate_token_bitmask(1, engine.vocab_size)
        grammar.fill_mask(bitmask, 0)
        sets.append(((bitmask[0, vocab // 32] >> (vocab % 32)) & 1).bool())  # bit t of the packed mask
        assert grammar.accept(token)
    return sets


@pytest.mark.parametrize("kind", ["json", "regex"])
async def test_logprobs_are_the_model_renormalised_over_what_the_grammar_allows(engine, kind):
    """vLLM masks before it computes logprobs: each token's logprob is the plain forward pass's, renormalised over
    the allowed set; `top_logprobs` are the best allowed tokens, then forbidden ones at -9999.0 (vLLM's -inf) when
    fewer than k are allowed. A forced token has logprob exactly 0.0."""
    request = ask(TICKETS[0], CONSTRAINTS[kind], top_logprobs=5)
    _, logprobs, _ = await run(engine, request)
    generated = [entry.token_id for entry in logprobs]
    raw = forward_logprobs(engine, engine.encode_prompt(request)[0], generated)  # (T, V)
    forced = padded = 0
    for entry, allowed, raw_row in zip(logprobs, allowed_tokens(engine, CONSTRAINTS[kind], generated), raw,
                                       strict=True):
        masked = torch.where(allowed, raw_row - torch.logsumexp(raw_row[allowed], dim=0), -math.inf)  # (V,)
        assert abs(entry.logprob - masked[entry.token_id].item()) < 1e-4
        finite = [alt for alt in entry.top_logprobs if alt.logprob > -9999.0]
        assert [alt.token_id for alt in finite] == masked.topk(len(finite)).indices.tolist()
        assert len(finite) == min(5, int(allowed.sum()))
        assert all(alt.logprob == -9999.0 and not allowed[alt.token_id] for alt in entry.top_logprobs[len(finite):])
        forced += int(allowed.sum()) == 1 and entry.logprob == 0.0
        padded += len(finite) < 5
    assert forced >= 2 and padded >= 2  # both shapes were seen


@pytest.mark.parametrize("constraint, parameter, words", [
    ({"regex": "("}, "structured_outputs.regex", "not a valid regular expression"),
    ({"json": {"type": "objectx"}}, "structured_outputs.json", "not a valid JSON schema"),
    ({"json": "5"}, "structured_outputs.json", "not a valid JSON schema"),
    ({"grammar": "root ::= foo"}, "structured_outputs.grammar", 'Rule "foo" is not defined'),
    ({"grammar": 'start: "a" | b'}, "structured_outputs.grammar", "not a valid Lark grammar"),
    ({"choice": []}, "structured_outputs.choice", "empty list"),
])
async def test_a_bad_constraint_is_a_400_naming_the_field_before_any_token(engine, constraint, parameter, words):
    stream = engine.generate(ask(TICKETS[0], constraint))
    with pytest.raises(InvalidRequest) as refused:
        await anext(stream)
    assert refused.value.parameter == parameter and words in refused.value.message
    assert "/project/cpp" not in refused.value.message  # xgrammar's source location is not the client's business


async def test_a_mixed_batch_gives_each_request_the_answer_it_gets_alone(engine):
    requests = [
        ask(TICKETS[0], None, "mix-free"),
        ask(TICKETS[1], CONSTRAINTS["json"], "mix-json"),
        ask(TICKETS[2], CONSTRAINTS["regex"], "mix-regex"),
        ask(TICKETS[3], CONSTRAINTS["choice"], "mix-choice"),
        ask(TICKETS[0], CONSTRAINTS["json"], "mix-sampled", temperature=1.0, seed=5),
        ask(TICKETS[1], None, "mix-free-sampled", temperature=1.0, seed=6, top_logprobs=None),
    ]
    alone = [await run(engine, request) for request in requests]
    together = await asyncio.gather(*(run(engine, request) for request in requests))
    for request, single, batched in zip(requests, alone, together, strict=True):
        assert batched[0] == single[0], request.request_id
        assert [e.token_id for e in batched[1]] == [e.token_id for e in single[1]]
        assert all(abs(a.logprob - b.logprob) < 1e-4 for a, b in zip(batched[1], single[1], strict=True))
    shared = [ids for _, ids in engine.recent_steps if {"mix-free", "mix-json", "mix-regex"} <= set(ids)]
    assert shared, "the constrained and unconstrained requests were decoded in the same steps"


def first_token(engine: LocalEngine, text: str) -> int:
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"][0]


async def test_a_bias_cannot_bring_back_a_masked_token_but_moves_among_allowed_ones(engine):
    choices = {"choice": ["billing", "returns"]}
    free, _, _ = await run(engine, ask(TICKETS[0], None))
    chosen, _, _ = await run(engine, ask(TICKETS[0], choices))
    other = "returns" if chosen == "billing" else "billing"
    forbidden = first_token(engine, free)  # what the model says unconstrained: not a choice's first token
    text, logprobs, _ = await run(engine, ask(TICKETS[0], choices, logit_bias=((forbidden, 100.0),)))
    assert text == chosen
    assert all(alt.logprob == -9999.0 for alt in logprobs[0].top_logprobs if alt.token_id == forbidden)
    text, _, _ = await run(engine, ask(TICKETS[0], choices, logit_bias=((first_token(engine, other), 100.0),)))
    assert text == other


async def test_a_stop_token_ends_the_answer_only_where_the_grammar_can(engine):
    """`stop_token_ids` are stop tokens of the grammar too (vLLM's `all_stop_token_ids`): a strong bias cannot put
    one mid-document, but at the end it wins over the end token and is the stop reason."""
    stop = first_token(engine, "{")
    text, logprobs, finish = await run(engine, ask(TICKETS[0], CONSTRAINTS["grammar"], stop_token_ids=(stop,),
                                                   logit_bias=((stop, 100.0),)))
    assert holds("grammar", text)
    assert (finish.finish_reason, finish.stop_reason) == ("stop", stop) and logprobs[-1].token_id == stop


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
async def test_a_stop_token_the_grammar_needs_is_a_400_not_a_failure(engine, temperature):
    """vLLM 0.32 samples a forbidden token at such a dead end and answers 500; the request built it, so: a 400."""
    needed = first_token(engine, "P")
    with pytest.raises(InvalidRequest) as refused:
        await run(engine, ask(TICKETS[0], CONSTRAINTS["grammar"], stop_token_ids=(needed,), temperature=temperature,
                              seed=1))
    assert refused.value.parameter == "structured_outputs" and "stop_token_ids" in refused.value.message


async def test_max_tokens_cuts_the_document_with_length(engine):
    full, _, _ = await run(engine, ask(TICKETS[0], CONSTRAINTS["json"]))
    text, _, finish = await run(engine, ask(TICKETS[0], CONSTRAINTS["json"], max_tokens=8))
    assert (finish.finish_reason, finish.completion_tokens) == ("length", 8)
    assert full.startswith(text) and text != full


async def test_a_stop_string_cuts_the_constrained_answer(engine):
    full, _, _ = await run(engine, ask(TICKETS[0], CONSTRAINTS["json"]))
    text, _, finish = await run(engine, ask(TICKETS[0], CONSTRAINTS["json"], stop=('"reply"',)))
    assert text == full[:full.index('"reply"')]
    assert (finish.finish_reason, finish.stop_reason) == ("stop", '"reply"')


async def test_under_continue_final_message_the_grammar_starts_at_the_first_generated_token(engine):
    """As vLLM does (NOTES.md): the continuation is a whole document of its own, not the rest of the prefix's."""
    messages = [*TICKETS[0], {"role": "assistant", "content": '{"queue": "bil'}]
    request = GenerationRequest("continue", tuple(messages), SamplingParams(max_tokens=96, temperature=0.0),
                                add_generation_prompt=False, continue_final_message=True,
                                structured_outputs=CONSTRAINTS["json"])
    text, _, finish = await run(engine, request)
    assert holds("json", text) and finish.finish_reason == "stop"


async def test_packed_streaming_sends_the_same_constrained_answer(engine, demo_dirs):
    packed = LocalEngine(EngineSettings(model_dir=demo_dirs[0], threads=1, stream_interval=4))
    try:
        request = ask(TICKETS[1], CONSTRAINTS["json"])
        deltas = [event async for event in packed.generate(request) if hasattr(event, "logprobs")]
        text, logprobs, _ = await run(engine, request)
    finally:
        packed.shutdown()
    assert "".join(delta.text for delta in deltas) == text
    assert [e.token_id for delta in deltas for e in delta.logprobs] == [e.token_id for e in logprobs]
    assert max(len(delta.logprobs) for delta in deltas) == 4


async def test_seeded_sampling_under_a_grammar_repeats_and_stays_valid(engine):
    answers = [await run(engine, ask(TICKETS[2], CONSTRAINTS["json"], f"seeded-{i}", temperature=1.5, seed=11))
               for i in range(2)]
    assert answers[0][0] == answers[1][0] and holds("json", answers[0][0])


async def test_with_ignore_eos_the_answer_goes_on_past_the_grammars_end(engine):
    """vLLM's matcher accepts the end token and terminates; `ignore_eos` keeps generating, unmasked."""
    text, logprobs, finish = await run(engine, ask(TICKETS[0], {"regex": "(yes|no)"}, max_tokens=8, ignore_eos=True))
    assert (finish.finish_reason, finish.completion_tokens) == ("length", 8)
    assert text.startswith(("yes", "no"))
    assert any(entry.token_id in engine.eos_ids for entry in logprobs[:-1])  # the grammar's end, generated past


async def test_a_grammar_compiles_once(engine):
    schema = {"type": "object", "properties": {"only_here": {"type": "integer"}}}
    before = engine.grammars.cache_bytes()
    await run(engine, ask(TICKETS[0], {"json": schema}, max_tokens=4))
    grown = engine.grammars.cache_bytes()
    await run(engine, ask(TICKETS[1], {"json": schema}, max_tokens=4))
    assert grown > before and engine.grammars.cache_bytes() == grown


def test_rows_without_a_live_grammar_are_not_touched():
    logits = torch.randn(3, 64)  # (B, V)
    ended = SequenceGrammar(matcher=None)
    ended.terminated = True
    before = logits.clone()
    mask_logits(logits, [None, ended, None])
    assert torch.equal(logits, before)


async def test_a_regex_that_compiles_too_long_is_a_400(engine, monkeypatch):
    """vLLM's guard against patterns whose automaton explodes: past the time limit the request is refused (this
    pattern takes about 14 ms; the limit is lowered below that)."""
    monkeypatch.setattr(grammar, "REGEX_TIMEOUT_S", 1e-4)
    with pytest.raises(InvalidRequest) as refused:
        await run(engine, ask(TICKETS[0], {"regex": "(.{1,100}){1,99}"}))
    assert refused.value.parameter == "structured_outputs.regex" and "simplify" in refused.value.message
