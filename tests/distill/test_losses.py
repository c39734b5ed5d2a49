"""KD losses: zero on identical distributions, the top-k+tail KL bounded by the dense one and equal to it when k=V,
JSD's β ends, masking, and the chunked loss equal to the unchunked one (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.losses import IGNORE_INDEX, ChunkedKD, DenseKD, HardLabelCE, HiddenStateMSE, SparseKD, generalized_jsd, kl

V = 50


def teacher_top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    logprobs = F.log_softmax(logits, dim=-1)
    values, ids = logprobs.topk(k, dim=-1)
    return ids, values


def test_identical_distributions_give_zero():
    logits = torch.randn(7, V)
    labels = torch.zeros(7, dtype=torch.long)
    ids, logprobs = teacher_top_k(logits, 5)
    for divergence in ("forward", "reverse", "jsd"):
        assert SparseKD(2.0, divergence)(logits, ids, logprobs, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert DenseKD(2.0, beta=0.5)(logits, logits, labels).item() == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.sampled_from([1, 3, 10]))
def test_top_k_with_tail_never_exceeds_the_dense_kl(seed, k):
    generator = torch.Generator().manual_seed(seed)
    teacher, student = torch.randn(4, V, generator=generator) * 3, torch.randn(4, V, generator=generator) * 3
    labels = torch.zeros(4, dtype=torch.long)
    ids, logprobs = teacher_top_k(teacher, k)
    sparse = SparseKD(1.0)(student, ids, logprobs, labels).item()
    dense = DenseKD(1.0, beta=0.0)(student, teacher, labels).item()
    assert -1e-6 <= sparse <= dense + 1e-5


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_top_k_equals_dense_when_k_is_the_vocabulary(temperature):
    teacher, student = torch.randn(6, V) * 2, torch.randn(6, V) * 2
    labels = torch.zeros(6, dtype=torch.long)
    ids, logprobs = teacher_top_k(teacher, V)
    for divergence, beta in (("forward", 0.0), ("reverse", 1.0), ("jsd", 0.3)):
        sparse = SparseKD(temperature, divergence, beta=0.3)(student, ids, logprobs, labels)
        dense = DenseKD(temperature, beta=beta)(student, teacher, labels)
        assert sparse.item() == pytest.approx(dense.item(), rel=1e-4, abs=1e-5)


def test_temperature_scales_by_tau_squared_and_jsd_ends():
    p, q = F.log_softmax(torch.randn(3, V), -1), F.log_softmax(torch.randn(3, V), -1)
    assert torch.allclose(generalized_jsd(p, q, 0.0), kl(p, q))
    assert torch.allclose(generalized_jsd(p, q, 1.0), kl(q, p))
    middle = generalized_jsd(p, q, 0.5)  # the Jensen-Shannon divergence: between 0 and ln 2
    m = torch.log((p.exp() + q.exp()) / 2)
    assert torch.allclose(middle, 0.5 * kl(p, m) + 0.5 * kl(q, m)) and (middle <= math.log(2) + 1e-6).all()


def test_masking_padding_and_dtype():
    logits = torch.randn(4, V, dtype=torch.float16, requires_grad=True)
    ids, logprobs = teacher_top_k(torch.randn(4, V), 4)
    all_masked = torch.full((4,), IGNORE_INDEX)
    loss = SparseKD()(logits, ids, logprobs.half(), all_masked)
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    loss.backward()  # a graph, with zero gradients
    assert torch.count_nonzero(logits.grad) == 0
    assert HardLabelCE()(logits, all_masked).item() == 0.0
    padded_ids = ids.clone()
    padded_ids[:, 2:] = -1  # rows with only 2 reported alternatives
    labels = torch.zeros(4, dtype=torch.long)
    padded = SparseKD()(logits.float(), padded_ids, logprobs, labels)
    two = SparseKD()(logits.float(), ids[:, :2], logprobs[:, :2], labels)
    assert padded.item() == pytest.approx(two.item(), rel=1e-5)


def test_chunked_loss_equals_unchunked_values_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, requires_grad=True)  # (B, T, H)
    head = torch.nn.Linear(16, V, bias=False)
    ids, logprobs = teacher_top_k(torch.randn(18, V), 5)
    labels = torch.randint(0, V, (18,))
    labels[:4] = IGNORE_INDEX
    results = {}
    for chunk in (1000, 4):
        hidden.grad, head.weight.grad = None, None
        out = ChunkedKD(SparseKD(2.0), alpha=0.7, chunk_tokens=chunk)(hidden.reshape(18, 16), head, ids, logprobs,
                                                                        labels)
        out["loss"].backward()
        results[chunk] = (out["loss"].item(), hidden.grad.clone(), head.weight.grad.clone())
    (whole, grad_h, grad_w), (chunked, grad_h2, grad_w2) = results[1000], results[4]
    assert chunked == pytest.approx(whole, rel=1e-5)
    assert torch.allclose(grad_h, grad_h2, atol=1e-6) and torch.allclose(grad_w, grad_w2, atol=1e-6)
    reference_logits = hidden.reshape(18, 16) @ head.weight.T
    expected = 0.7 * SparseKD(2.0)(reference_logits, ids, logprobs, labels) + \
        0.3 * HardLabelCE()(reference_logits, labels)
    assert whole == pytest.approx(expected.item(), rel=1e-5)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        SparseKD(0.0)
    with pytest.raises(ValueError, match="divergence"):
        SparseKD(1.0, "tvd")
    with pytest.raises(ValueError, match="alpha"):
        ChunkedKD(SparseKD(), alpha=1.5)


def test_hidden_state_loss_is_zero_for_an_exact_projection_and_scale_free():
    torch.manual_seed(0)
    student = [torch.randn(2, 5, 4) for _ in range(3)]  # embeddings + 2 layers, (B, T, H_s)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    loss = HiddenStateMSE(4, 6, [(1, 2), (2, 3)])
    mapping = torch.randn(6, 4)
    with torch.no_grad():
        for projection in loss.projections:
            projection.weight.copy_(mapping)
    teacher = [torch.randn(2, 5, 6) for _ in range(4)]
    teacher[2], teacher[3] = student[1] @ mapping.T, student[2] @ mapping.T
    assert loss(student, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for projection in loss.projections:
            projection.weight.zero_()
    assert loss(student, [10 * t for t in teacher], mask).item() == pytest.approx(1.0)  # zero output scores 1
    assert loss(student, teacher, torch.zeros_like(mask)).item() == 0.0


def test_hidden_state_loss_trains_the_projection_and_the_student_not_the_teacher():
    student_state = torch.randn(1, 3, 4, requires_grad=True)
    teacher_state = torch.randn(1, 3, 6, requires_grad=True)
    loss = HiddenStateMSE(4, 6, [(0, 0)])
    loss([student_state], [teacher_state], torch.ones(1, 3, dtype=torch.bool)).backward()
    assert student_state.grad is not None and loss.projections[0].weight.grad is not None
    assert teacher_state.grad is None
