"""Next-token selection for a batch whose rows carry their own temperature, top-p and seed."""

from __future__ import annotations

from collections.abc import Sequence

import torch

GREEDY_BELOW = 1e-5  # vLLM's sampling epsilon: a smaller temperature is greedy (dividing by it overflows)


def sample_next(logits: torch.Tensor, temperatures: Sequence[float], top_ps: Sequence[float],
                generators: Sequence[torch.Generator | None], failures: dict[int, Exception] | None = None
                ) -> torch.Tensor:
    """Pick one token per row: argmax where temperature is (about) 0, else top-p sampling at that temperature.

    A row whose sampling raises keeps its argmax and has its error put in `failures` (row -> error), so one
    request's parameters fail that request alone; without `failures` the error propagates.

    Args:
        logits: (B, V) float32 raw logits of the last position.
    Returns:
        (B,) token ids.
    """
    chosen = logits.argmax(dim=-1)  # (B,)
    sampled_rows = [row for row, temperature in enumerate(temperatures) if temperature >= GREEDY_BELOW]
    for row in sampled_rows:
        try:
            chosen[row] = _sample_row(logits[row], temperatures[row], top_ps[row], generators[row])
        except Exception as error:  # noqa: BLE001  (whatever torch raises, it is this row's)
            if failures is None:
                raise
            failures[row] = error
    return chosen


def _sample_row(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    probs = torch.softmax(logits / temperature, dim=-1)  # (V,)
    if top_p < 1.0:
        probs = _top_p_filter(probs, top_p)
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
