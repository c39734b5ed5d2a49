"""Random-sampling KD: the sparse target is the teacher's tempered distribution in expectation (with q = p and with a
flatter proposal), its gradient is full KD's in expectation, a top-k target's is not, and the output is well formed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.config import load_config
from distill.losses import DenseKD, SampledKD, SparseKD
from distill.sampling import sample_targets

V = 30


def _teacher(seed: int = 0, positions: int = 1) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """A full-vocabulary teacher written as a K=V cache, and its logits."""
    logits = torch.randn(positions, V, generator=torch.Generator().manual_seed(seed)) * 2.5
    logprobs, ids = F.log_softmax(logits, -1).sort(-1, descending=True)
    return ids.numpy().astype(np.int32), logprobs.numpy().astype(np.float16), logits


def _dense_target(ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(T, V) p̂ scattered back to the vocabulary."""
    target = np.zeros((ids.shape[0], V))
    rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1]).reshape(ids.shape)
    np.add.at(target, (rows[ids >= 0], ids[ids >= 0]), weights[ids >= 0])
    return target


@pytest.mark.parametrize(("temperature", "proposal"), [(1.0, 1.0), (2.0, 1.0), (1.0, 3.0)])
def test_the_sparse_target_is_unbiased(temperature, proposal):
    ids, logprobs, logits = _teacher()
    repeats = 40_000
    drawn_ids, log_weights = sample_targets(np.repeat(ids, repeats, 0), np.repeat(logprobs, repeats, 0), 4,
                                            np.random.default_rng(0), temperature, proposal)
    mean = _dense_target(drawn_ids, np.exp(log_weights)).mean(0)
    expected = F.softmax(logits[0] / temperature, -1).numpy()
    assert np.abs(mean - expected).max() < 0.01
    assert np.abs(mean - expected).sum() < 0.03


def test_gradient_is_full_kd_in_expectation_and_top_k_is_biased():
    ids, logprobs, teacher_logits = _teacher(seed=3, positions=1)
    student = torch.randn(1, V, generator=torch.Generator().manual_seed(4))
    labels = torch.zeros(1, dtype=torch.long)

    def gradient(loss_fn) -> torch.Tensor:
        logits = student.clone().requires_grad_(True)
        loss_fn(logits).backward()
        return logits.grad[0]

    dense = gradient(lambda z: DenseKD(2.0)(z, teacher_logits, labels))
    repeats = 20_000
    drawn_ids, log_weights = sample_targets(np.repeat(ids, repeats, 0), np.repeat(logprobs, repeats, 0), 3,
                                            np.random.default_rng(1), temperature=2.0)
    sampled = gradient(lambda z: SampledKD(2.0).per_token(z.expand(repeats, V), torch.from_numpy(drawn_ids).long(),
                                                          torch.from_numpy(log_weights)).mean())
    top_3 = gradient(lambda z: SparseKD(2.0)(z, torch.from_numpy(ids[:, :3]).long(),
                                             torch.from_numpy(logprobs[:, :3]).float(), labels))
    assert (sampled - dense).abs().max() < 0.02
    assert (top_3 - dense).abs().max() > 5 * (sampled - dense).abs().max()


def test_targets_are_distinct_heaviest_first_and_sum_to_one_when_q_is_p():
    ids, logprobs, _ = _teacher(seed=5, positions=64)
    ids[:, -5:], logprobs[:, -5:] = -1, 0.0  # rows with fewer cached alternatives
    drawn, log_weights = sample_targets(ids, logprobs, 6, np.random.default_rng(2))
    assert np.allclose(np.where(drawn >= 0, np.exp(log_weights), 0.0).sum(-1), 1.0, atol=1e-5)
    drawn, log_weights = sample_targets(ids, logprobs, 6, np.random.default_rng(2), proposal_temperature=2.0)
    assert drawn.shape == (64, 6)
    weights = np.where(drawn >= 0, np.exp(log_weights), 0.0)
    assert (np.diff(weights, axis=-1) <= 1e-7).all()
    for row, cached in zip(drawn, ids, strict=True):
        kept = row[row >= 0]
        assert len(set(kept)) == len(kept) and set(kept) <= set(cached[cached >= 0])
    wide, _ = sample_targets(ids[:, :2], logprobs[:, :2], 8, np.random.default_rng(2))
    assert wide.shape == (64, 2)
    with pytest.raises(ValueError, match="draws"):
        sample_targets(ids, logprobs, 0, np.random.default_rng(0))


def _gradient(loss: SampledKD, logits: torch.Tensor, ids: torch.Tensor, log_weights: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token loss values (N,) and their sum's gradient in the logits (N, V)."""
    logits = logits.clone().requires_grad_(True)
    value = loss.per_token(logits, ids, log_weights)
    value.sum().backward()
    return value.detach(), logits.grad


def check_no_gradient_only_at_the_target(loss: SampledKD) -> None:
    """At τ=1, p̂ = the student's own distribution on a complete draw: KL 0 and no gradient. Moved off it (the same
    weights on other tokens), the gradient is the closed form s − p̂ (τ·(s_τ − p̂) in `SampledKD`'s docstring)."""
    logits = torch.randn(2, V, generator=torch.Generator().manual_seed(11)) * 2.0  # (N, V)
    logprobs, ids = F.log_softmax(logits, -1).sort(-1, descending=True)  # (N, V) each
    value, gradient = _gradient(loss, logits, ids, logprobs)
    assert torch.allclose(value, torch.zeros(2), atol=1e-5)
    assert gradient.abs().max() < 1e-5, f"a gradient of {gradient.abs().max():.3g} at the target"
    moved = logprobs.roll(1, -1)  # (N, V) each token gets its neighbour's weight
    _, gradient = _gradient(loss, logits, ids, moved)
    expected = F.softmax(logits, -1) - torch.zeros_like(logits).scatter(-1, ids, moved.exp())  # (N, V)
    assert expected.abs().max() > 0.05
    assert torch.allclose(gradient, expected, atol=1e-5)


def test_sampled_loss_is_zero_only_gradient_wise_at_the_target():
    check_no_gradient_only_at_the_target(SampledKD(1.0))


def test_zero_gradient_check_fails_when_the_loss_has_a_gradient_at_the_target(monkeypatch):
    """`SampledKD` broken in-process: the student's log-softmax normaliser detached. Every value is the same (the
    old value-only test stayed green), but at the target the gradient is −p̂, not 0."""
    def detached_normaliser(self, student_logits, target_ids, target_log_weights):
        scaled = student_logits.float() / self.temperature  # (N, V)
        student = scaled - scaled.detach().logsumexp(-1, keepdim=True)  # (N, V) the bug
        student_drawn = student.gather(-1, target_ids.clamp(min=0))  # (N, m)
        target = target_log_weights.float()  # (N, m)
        terms = (target.exp() * (target - student_drawn)).masked_fill(target_ids < 0, 0.0)  # (N, m)
        return terms.sum(-1) * self.temperature**2

    ids, logprobs, _ = _teacher(seed=6, positions=3)
    inputs = (torch.randn(3, V, generator=torch.Generator().manual_seed(8)), torch.from_numpy(ids).long(),
              torch.from_numpy(logprobs).float())
    honest = SampledKD(1.0).per_token(*inputs)
    monkeypatch.setattr(SampledKD, "per_token", detached_normaliser)
    assert torch.allclose(SampledKD(1.0).per_token(*inputs), honest, atol=1e-6)
    with pytest.raises(AssertionError, match="a gradient of"):
        check_no_gradient_only_at_the_target(SampledKD(1.0))


def test_sampled_needs_forward_kl():
    with pytest.raises(ValueError, match="forward KL only"):
        load_config(None, ["student.init=s", "cache=c", "out=o", "loss.estimator=sampled",
                           "loss.divergence=reverse"])
