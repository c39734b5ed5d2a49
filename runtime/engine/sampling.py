"""Next-token selection for a batch whose rows carry their own sampling parameters and seed, as vLLM does it.

The order is vLLM's (vllm/v1/sample/sampler.py): `logit_bias` is added to the float32 logits, then the repetition,
frequency and presence penalties apply (vllm/model_executor/layers/utils.py `apply_penalties`); these can change the
greedy token. A greedy row (temperature about 0) takes the argmax of those logits. A sampled row divides them by its
temperature, then drops tokens by `min_p` (relative to the most likely token's probability), `top_k` and `top_p`,
and draws from what is left. The logprobs a request gets back are computed before all of this (raw, see
`runtime.engine.logprobs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from runtime.contract import SamplingParams

GREEDY_BELOW = 1e-5  # vLLM's sampling epsilon: a smaller temperature is greedy (dividing by it overflows)


@dataclass(frozen=True)
class RowSampling:
    """One batch row's parameters, and the token history its penalties look at."""

    params: SamplingParams
    prompt_ids: Sequence[int] = ()
    output_ids: Sequence[int] = ()  # the tokens generated so far, not counting the one being chosen
    generator: torch.Generator | None = None


def sample_next(logits: torch.Tensor, rows: Sequence[RowSampling], failures: dict[int, Exception] | None = None
                ) -> torch.Tensor:
    """Pick one token per row: the argmax of the processed logits where temperature is (about) 0, else a draw.

    A row whose processing or sampling raises keeps the raw argmax and has its error put in `failures` (row ->
    error), so one request's parameters fail that request alone; without `failures` the error propagates.

    Args:
        logits: (B, V) float32 raw logits of the last position; left untouched.
    Returns:
        (B,) token ids.
    """
    chosen = logits.argmax(dim=-1)  # (B,)
    for row, sampling in enumerate(rows):
        if not _processes(sampling.params):
            continue
        try:
            chosen[row] = _choose(logits[row], sampling)
        except Exception as error:  # noqa: BLE001  (whatever torch raises, it is this row's)
            if failures is None:
                raise
            failures[row] = error
    return chosen


def _processes(params: SamplingParams) -> bool:
    """Whether the row needs more than the raw argmax."""
    return params.temperature >= GREEDY_BELOW or bool(params.logit_bias) or _penalised(params)


def _penalised(params: SamplingParams) -> bool:
    return params.repetition_penalty != 1.0 or params.frequency_penalty != 0.0 or params.presence_penalty != 0.0


def _choose(raw: torch.Tensor, sampling: RowSampling) -> int:
    params = sampling.params
    logits = processed_logits(raw, params, sampling.prompt_ids, sampling.output_ids)  # (V,)
    if params.temperature < GREEDY_BELOW:
        return int(logits.argmax())
    return _sample(logits, params, sampling.generator)


def processed_logits(raw: torch.Tensor, params: SamplingParams, prompt_ids: Sequence[int],
                     output_ids: Sequence[int]) -> torch.Tensor:
    """The logits after `logit_bias` and the penalties, the ones greedy decoding and sampling start from.

    Args:
        raw: (V,) float32 raw logits (not modified).
    Returns:
        (V,) a new tensor.
    """
    logits = raw.clone()
    if params.logit_bias:
        ids = torch.tensor([token_id for token_id, _ in params.logit_bias], device=logits.device)
        logits[ids] += torch.tensor([bias for _, bias in params.logit_bias], dtype=logits.dtype, device=logits.device)
    if not _penalised(params):
        return logits
    vocab = logits.shape[-1]
    counts = torch.bincount(torch.tensor(list(output_ids), dtype=torch.long, device=logits.device),
                            minlength=vocab)[:vocab]  # (V,) times each token was generated
    generated = counts > 0  # (V,)
    if params.repetition_penalty != 1.0:
        in_prompt = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
        in_prompt[torch.tensor(list(prompt_ids), dtype=torch.long, device=logits.device)] = True
        penalties = torch.where(in_prompt | generated, torch.tensor(params.repetition_penalty, dtype=logits.dtype),
                                torch.tensor(1.0, dtype=logits.dtype))  # (V,)
        logits *= torch.where(logits > 0, 1.0 / penalties, penalties)  # vLLM's: divide positive, multiply negative
    logits -= params.frequency_penalty * counts
    logits -= params.presence_penalty * generated
    return logits


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    scaled = logits / params.temperature  # (V,)
    if params.min_p > 0.0:
        probs = torch.softmax(scaled, dim=-1)
        scaled = scaled.masked_fill(probs < probs.max() * params.min_p, -float("inf"))
    if 0 < params.top_k < scaled.shape[-1]:
        kth_best = scaled.topk(params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth_best, -float("inf"))
    probs = torch.softmax(scaled, dim=-1)  # (V,)
    if params.top_p < 1.0:
        probs = _top_p_filter(probs, params.top_p)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p` (at least one), renormalised.

    The most likely token is always kept: a `top_p` below float32's smallest number compares as 0 on the tensor,
    which would otherwise drop every token and leave NaN to sample from."""
    sorted_probs, order = probs.sort(descending=True)  # (V,)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    dropped = mass_before >= top_p
    dropped[0] = False
    sorted_probs[dropped] = 0.0
    filtered = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return filtered / filtered.sum()


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A per-request generator, so a seeded request samples the same tokens whatever else shares its batch."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
