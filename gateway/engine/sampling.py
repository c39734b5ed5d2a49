"""Next-token selection for a batch whose rows carry their own temperature, top-p and seed."""

from __future__ import annotations

from collections.abc import Sequence

import torch

GREEDY_BELOW = 1e-5  # vLLM's sampling epsilon: a smaller temperature is greedy (dividing by it overflows)


def sample_next(logits: torch.Tensor, temperatures: Sequence[float], top_ps: Sequence[float],
                generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """Pick one token per row: argmax where temperature is (about) 0, else top-p sampling at that temperature.

    Args:
        logits: (B, V) float32 raw logits of the last position.
    Returns:
        (B,) token ids.
    """
    chosen = logits.argmax(dim=-1)  # (B,)
    sampled_rows = [row for row, temperature in enumerate(temperatures) if temperature >= GREEDY_BELOW]
    for row in sampled_rows:
        scaled = logits[row] / temperatures[row]  # (V,)
        probs = torch.softmax(scaled, dim=-1)
        if top_ps[row] < 1.0:
            probs = _top_p_filter(probs, top_ps[row])
        chosen[row] = torch.multinomial(probs, 1, generator=generators[row]).item()
    return chosen


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p` (at least one), renormalised."""
    sorted_probs, order = probs.sort(descending=True)  # (V,)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs[mass_before >= top_p] = 0.0
    filtered = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return filtered / filtered.sum()


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A per-request generator, so a seeded request samples the same tokens whatever else shares its batch."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
