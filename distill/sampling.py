"""Sparse targets by importance sampling (Anshumann et al., ACL 2025, "Sparse Logit Sampling").

A top-k cache hands the student a biased picture of the teacher: the k most likely tokens, renormalised or with
the rest lumped into one bucket. Random-sampling KD instead draws `draws` tokens per position from a proposal q
and keeps each distinct token x with weight count(x)/draws · p(x)/q(x), so the sparse target p̂ equals the
teacher's distribution in expectation, and the gradient of the student's cross-entropy against p̂, taken over the
student's **full** softmax, equals full KD's in expectation: it is linear in p̂. The weights are not renormalised
(a self-normalised p̂ is biased for few draws when q ≠ p); with q = p they already sum to 1. It stores as few
entries as a small top-k.

Here the draws come from the teacher's cached top-K (K=20 on the demo, whose tail mass is ~4e-6), tempered at τ:
the estimator is unbiased for the teacher as far as the cache holds it. `proposal_temperature` t > 1 flattens q
(q ∝ p_τ^(1/t)) so that rarer tokens are drawn and weighted down.
"""

from __future__ import annotations

import numpy as np


def sample_targets(topk_ids: np.ndarray, topk_logprobs: np.ndarray, draws: int, rng: np.random.Generator,
                   temperature: float = 1.0, proposal_temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per position, the distinct drawn tokens and the log of their self-normalised importance weights.

    Args:
        topk_ids: (T, K) the teacher's cached token ids, -1 padding.
        topk_logprobs: (T, K) their logprobs at temperature 1.
        draws: samples per position.
    Returns:
        ids (T, min(draws, K)) int32, heaviest first, -1 padding; log weights of the same shape, float32
        (padded entries hold 0.0 and are masked by their id). The weights sum to 1 in expectation (exactly
        when q = p).
    """
    if draws < 1:
        raise ValueError(f"draws must be ≥ 1, got {draws}")
    valid = topk_ids >= 0  # (T, K)
    tempered = np.where(valid, topk_logprobs.astype(np.float64) / temperature, -np.inf)  # (T, K)
    target = _normalise(tempered)  # (T, K) p_τ over the cached tokens
    proposal = _normalise(tempered / proposal_temperature)  # (T, K) q
    positions = topk_ids.shape[0]
    # inverse-CDF draws, all positions at once
    cumulative = np.cumsum(proposal, axis=-1)  # (T, K)
    cumulative[:, -1] = 1.0
    uniform = rng.random((positions, draws))  # (T, draws)
    picks = (uniform[:, :, None] > cumulative[:, None, :]).sum(-1)  # (T, draws) index into K
    counts = np.zeros_like(target)  # (T, K)
    np.add.at(counts, (np.repeat(np.arange(positions), draws), picks.ravel()), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):  # a position with no cached token ends with weight 0
        weights = np.nan_to_num(np.where(counts > 0, counts / draws * target / proposal, 0.0))  # (T, K)
    order = np.argsort(-weights, axis=-1, kind="stable")[:, :draws]  # (T, draws) heaviest first
    kept = np.take_along_axis(weights, order, -1)  # (T, draws)
    ids = np.where(kept > 0, np.take_along_axis(topk_ids, order, -1), -1).astype(np.int32)
    with np.errstate(divide="ignore"):
        log_weights = np.where(kept > 0, np.log(kept), 0.0).astype(np.float32)
    return ids, log_weights


def _normalise(logits: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        return shifted / shifted.sum(-1, keepdims=True)
