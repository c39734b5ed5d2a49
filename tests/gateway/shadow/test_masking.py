"""The teacher's scores held to the student's constraint (gateway.shadow.masking), on crafted logprobs: under a
grammar the student reports the masked distribution (a forced token at logprob 0, forbidden alternatives at
-9999.0) while the teacher's `prompt_logprobs` are unconstrained. Masked, a forced token costs the student nothing and
the teacher's top-1 is the best token the grammar allows; a free-text answer is compared as before."""

from __future__ import annotations

import math
import random

import pytest

from gateway.shadow.divergence import divergence
from gateway.shadow.masking import masked_scores, scores_under
from runtime.constraints.languages import constraint
from runtime.contract import TokenLogprob, TopLogprob

CHOICE = constraint({"choice": ["billing", "repairs"]})
FORBIDDEN = -9999.0


def token(text: str, logprob: float, *alternatives: tuple[str, float]) -> TokenLogprob:
    """A position as a backend reports it: the token first in its alternatives, then the others by rank."""
    return TokenLogprob(text, logprob, (TopLogprob(text, logprob), *(TopLogprob(t, lp) for t, lp in alternatives)))


# "billing" as the student wrote it under the choice's grammar: `bill` out of the two allowed starts, then `ing`
# forced (the mask left it alone: logprob 0, the rest padded with forbidden tokens)
STUDENT = (token("bill", math.log(0.7), ("rep", math.log(0.3)), ("Sure", FORBIDDEN)),
           token("ing", 0.0, ("ed", FORBIDDEN), ("s", FORBIDDEN)))
# the teacher, unconstrained, likes to chat first and would end the word otherwise
TEACHER = (token("bill", math.log(0.3), ("Sure", math.log(0.6)), ("rep", math.log(0.05))),
           token("ing", math.log(0.8), ("ed", math.log(0.15)), ("s", math.log(0.03))))


def test_the_masked_teacher_keeps_what_the_constraint_allows_renormalized():
    first, second = masked_scores(TEACHER, "billing", CHOICE.automaton)
    assert [top.token for top in first.top_logprobs] == ["bill", "rep"]  # "Sure" is no start of either choice
    assert [math.exp(top.logprob) for top in first.top_logprobs] == pytest.approx([0.3 / 0.35, 0.05 / 0.35])
    assert [top.token for top in second.top_logprobs] == ["ing"] and second.logprob == 0.0  # forced, as for the student
    assert first.token == "bill" and first.logprob == pytest.approx(math.log(0.3 / 0.35))


def test_masked_divergence_differs_from_unmasked_on_a_constrained_answer():
    unmasked = divergence(STUDENT, TEACHER, "billing", "billing")
    compared, masked_flag = scores_under(CHOICE, TEACHER, "billing")
    masked = divergence(STUDENT, compared, "billing", "billing")
    assert masked_flag is True and unmasked.aligned and masked.aligned
    assert masked.kl_per_token[1] == pytest.approx(0.0, abs=1e-12)  # a forced token: no student could do better
    assert unmasked.kl_per_token[1] > 1.0  # the teacher's forbidden `ed` against the student's -9999
    p = [0.3 / 0.35, 0.05 / 0.35]  # by hand: both sides over {bill, rep}, no tail
    assert masked.kl_per_token[0] == pytest.approx(p[0] * math.log(p[0] / 0.7) + p[1] * math.log(p[1] / 0.3))
    assert (unmasked.top1_agreement, masked.top1_agreement) == (0.5, 1.0)  # "Sure" was the teacher's top-1
    assert masked.teacher_nll < unmasked.teacher_nll


def test_a_free_text_answer_is_compared_as_before():
    compared, masked_flag = scores_under(None, TEACHER, "billing")
    assert compared is TEACHER and masked_flag is None
    assert divergence(STUDENT, compared, "billing", None) == divergence(STUDENT, TEACHER, "billing", None)


@pytest.mark.parametrize("seed", range(5))
def test_a_constraint_that_forbids_nothing_reported_changes_no_figure(seed):
    """When the teacher's top-k holds all its mass and the constraint allows all of it, masking is the identity:
    the figures are the unconstrained ones."""
    rng = random.Random(seed)
    letters = "abcdefgh"
    answer, student, teacher = "", [], []
    for _ in range(6):
        texts = rng.sample(letters, 4)
        for side in (student, teacher):
            weights = [rng.random() + 0.01 for _ in texts]
            probs = [weight / sum(weights) for weight in weights]
            side.append(token(texts[0], math.log(probs[0]), *zip(texts[1:], map(math.log, probs[1:]), strict=True)))
        answer += texts[0]
    compared, masked_flag = scores_under(constraint({"regex": "[a-h]*"}), teacher, answer)
    before, after = divergence(student, teacher, answer, None), divergence(student, compared, answer, None)
    assert masked_flag is True
    assert after.kl_per_token == pytest.approx(before.kl_per_token, abs=1e-9)
    assert (after.top1_agreement, after.teacher_nll) == pytest.approx((before.top1_agreement, before.teacher_nll))


def test_each_masked_position_is_a_distribution_over_allowed_tokens():
    for position in masked_scores(TEACHER, "billing", CHOICE.automaton):
        reported = {top.token: math.exp(top.logprob) for top in position.top_logprobs}
        assert sum(reported.values()) == pytest.approx(1.0)


def test_what_cannot_be_masked_is_compared_unmasked_and_says_so():
    grammar = constraint({"grammar": 'root ::= "billing" | "repairs"'})  # a client's grammar has no automaton
    assert scores_under(grammar, TEACHER, "billing") == (TEACHER, False)
    outside = (token("bill", math.log(0.3)), token("ed", math.log(0.1)))  # a backend that ignored the grammar
    assert scores_under(CHOICE, outside, "billed") == (outside, False)
    merged = (token(" bill", math.log(0.3)), token("ing", math.log(0.8)))  # a first token holding text before it
    assert scores_under(CHOICE, merged, "billing") == (merged, False)
