"""The teacher's scores of a constrained answer, held to the constraint the student answered under.

Under a grammar the student's logprobs are those of the masked distribution (vLLM masks the logits before it
computes logprobs: a forced token has logprob 0, forbidden alternatives come padded at -9999.0), while the teacher
scores the answer through `prompt_logprobs`, which applies no grammar. Compared as they are, every token the grammar
forbids counts against the student: the teacher's mass on a forbidden `,` where the schema wants `}` is a divergence
no student could close. So at each answer position the teacher's top-k keeps only the tokens the constraint's
automaton allows after the text before it, renormalized over them, and the divergence is computed from that.

**Assumed about the tail**: the teacher's mass beyond its top-k is unknown token by token; it is taken as forbidden,
so the allowed top-k is renormalized to sum to one. That is exact where the grammar allows no more than the top-k
lists (structure, keys, enum values, forced tokens: most of a JSON answer); where it allows more (free text inside a
string) the kept tokens are over-stated by at most the teacher's tail share, which adds about −log(reported mass) to
that position's KL. Tokens are judged by their text, as the grammar mask judges them, so a special token whose text
the language allows (an end token inside a JSON string) is kept although a backend's mask forbids it there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from runtime.constraints.automaton import Automaton, NotInLanguage
from runtime.constraints.languages import Constraint
from runtime.contract import LOGPROB_FLOOR, TokenLogprob, TopLogprob


def scores_under(constraint: Constraint | None, scored: Sequence[TokenLogprob], answer: str
                 ) -> tuple[Sequence[TokenLogprob], bool | None]:
    """The teacher's scores to compute the divergence from, and whether they were held to the constraint: None for
    a free-text answer (the scores as they are); False when the answer was constrained but its scores cannot be
    masked (a client's own grammar has no automaton; or the answer's tokens do not spell a start of a document of
    the language, as when a backend ignored the grammar); True when masked."""
    if constraint is None:
        return scored, None
    if constraint.automaton is None:
        return scored, False
    masked = masked_scores(scored, answer, constraint.automaton)
    return (scored, False) if masked is None else (masked, True)


def masked_scores(scored: Sequence[TokenLogprob], answer: str, automaton: Automaton
                  ) -> tuple[TokenLogprob, ...] | None:
    """Each scored position's alternatives cut to the ones `automaton` allows after the answer text before it, and
    renormalized (the module docstring says what is assumed of the tail). None when the positions cannot be placed
    in the language: the token texts do not spell `answer` exactly (the first token merged with the text before
    the answer, or a character split over tokens), or the answer leaves the language."""
    if "".join(entry.token for entry in scored) != answer:
        return None
    state, masked = automaton.walk(""), []
    for entry in scored:
        masked.append(_masked(entry, state, automaton))
        try:
            state = automaton.walk(entry.token, state)
        except NotInLanguage:
            return None
    return tuple(masked)


def _masked(entry: TokenLogprob, state: int, automaton: Automaton) -> TokenLogprob:
    """One position: the allowed alternatives (and the scored token, allowed where the answer stays in the language),
    their logprobs shifted so that their probabilities sum to one. A position where they hold no mass at all is left
    as it is (nothing to renormalize)."""
    allowed = tuple(top for top in entry.top_logprobs if automaton.allows(state, top.token))
    kept = {_key(top): top.logprob for top in allowed} | {_key(entry): entry.logprob}
    mass = sum(math.exp(logprob) for logprob in kept.values() if logprob > LOGPROB_FLOOR)
    if mass <= 0.0:
        return entry
    shift = math.log(mass)
    return TokenLogprob(entry.token, _shifted(entry.logprob, shift),
                        tuple(TopLogprob(top.token, _shifted(top.logprob, shift), top.token_id) for top in allowed),
                        entry.token_id)


def _key(entry: TokenLogprob | TopLogprob) -> int | str:
    return entry.token_id if entry.token_id is not None else entry.token


def _shifted(logprob: float, shift: float) -> float:
    return logprob if logprob <= LOGPROB_FLOOR else min(logprob - shift, 0.0)
