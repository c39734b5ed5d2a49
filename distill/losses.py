"""Distillation losses as small `nn.Module`s: all in fp32, `ignore_index=-100`, 0 when every position is masked.

Sparse (offline) losses take the teacher's cached top-k: token ids `(N, k)` and logprobs `(N, k)` at temperature 1
(what vLLM returns). The teacher's distribution is taken on its k tokens plus one **tail bucket** holding the rest
of its mass, and the student's on the same k tokens plus its own remaining mass. With temperature τ both sides are
re-tempered on that partition (the teacher's tail bucket is treated as one token: an approximation that is exact at
τ=1) and the loss is multiplied by τ², so gradients keep their scale across τ (Hinton et al., 2015).

Dense (online) losses take full teacher logits `(N, V)`. `GeneralizedJSD(β)` follows TRL's GKD convention:
mixture M = β·P_teacher + (1−β)·P_student and loss β·KL(P_teacher‖M) + (1−β)·KL(P_student‖M), with β=0 meaning
forward KL(teacher‖student) and β=1 reverse KL(student‖teacher) exactly.

`HiddenStateMSE` matches chosen student layers to teacher layers through learned projections (the teacher runs
online for it: hidden states are not cached).

Memory: `ChunkedKD` computes the student's logits from final hidden states a chunk of tokens at a time, under
activation checkpointing, so peak memory holds one chunk's `(chunk, V)` logits instead of the whole `(B·T, V)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
_LOG_EPS = -1e4  # log of an empty bucket: exp() is 0 in fp32, and 0·log 0 terms vanish


def _tail_logprob(logprobs: torch.Tensor) -> torch.Tensor:
    """(N, 1) log of the mass outside the given (N, k) logprobs, clamped at an empty bucket."""
    mass = torch.logsumexp(logprobs, dim=-1, keepdim=True).clamp(max=0.0)  # (N, 1)
    tail = torch.log1p(-torch.exp(mass).clamp(max=1.0 - 1e-7))  # (N, 1)
    return tail.clamp(min=_LOG_EPS)


def sparse_distributions(student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                         temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-distributions over the teacher's k tokens plus a tail bucket, both (N, k+1).

    Args:
        student_logits: (N, V) raw student logits.
        teacher_ids: (N, k) token ids of the teacher's top-k; -1 pads rows with fewer alternatives.
        teacher_logprobs: (N, k) their logprobs at temperature 1; padded entries are ignored.
    """
    valid = teacher_ids >= 0  # (N, k)
    ids = teacher_ids.clamp(min=0)
    student_logprobs = F.log_softmax(student_logits.float(), dim=-1)  # (N, V)
    student_top = student_logprobs.gather(-1, ids).masked_fill(~valid, _LOG_EPS)  # (N, k)
    teacher_top = teacher_logprobs.float().masked_fill(~valid, _LOG_EPS)  # (N, k)
    teacher = torch.cat([teacher_top, _tail_logprob(teacher_top)], dim=-1)  # (N, k+1)
    student = torch.cat([student_top, _tail_logprob(student_top)], dim=-1)  # (N, k+1)
    if temperature != 1.0:
        teacher = F.log_softmax(teacher / temperature, dim=-1)
        student = F.log_softmax(student / temperature, dim=-1)
    return teacher, student


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """(N,) KL(p‖q) from log-distributions over the last dim."""
    return (p_log.exp() * (p_log - q_log)).sum(dim=-1)


def generalized_jsd(teacher_log: torch.Tensor, student_log: torch.Tensor, beta: float) -> torch.Tensor:
    """(N,) TRL's generalized JSD; β=0 forward KL(teacher‖student), β=1 reverse KL(student‖teacher)."""
    if beta == 0.0:
        return kl(teacher_log, student_log)
    if beta == 1.0:
        return kl(student_log, teacher_log)
    mixture = torch.logsumexp(torch.stack([teacher_log + math.log(beta), student_log + math.log(1 - beta)]), dim=0)
    return beta * kl(teacher_log, mixture) + (1 - beta) * kl(student_log, mixture)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    count = mask.sum()
    if count == 0:
        return values.sum() * 0.0  # keeps the graph; 0 when every position is masked
    return (values * mask).sum() / count


class SparseKD(nn.Module):
    """KD on cached top-k teacher logprobs: `divergence` is "forward", "reverse" or "jsd" (with `beta`)."""

    def __init__(self, temperature: float = 1.0, divergence: str = "forward", beta: float = 0.5):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if divergence not in ("forward", "reverse", "jsd"):
            raise ValueError(f"divergence must be forward, reverse or jsd, got {divergence!r}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.temperature, self.divergence, self.beta = temperature, divergence, beta

    def per_token(self, student_logits, teacher_ids, teacher_logprobs) -> torch.Tensor:
        teacher, student = sparse_distributions(student_logits, teacher_ids, teacher_logprobs, self.temperature)
        beta = {"forward": 0.0, "reverse": 1.0, "jsd": self.beta}[self.divergence]
        return generalized_jsd(teacher, student, beta) * self.temperature**2  # (N,)

    def forward(self, student_logits, teacher_ids, teacher_logprobs, labels) -> torch.Tensor:
        """Mean over positions whose label is not `IGNORE_INDEX`. Shapes: (N, V), (N, k), (N, k), (N,)."""
        return _masked_mean(self.per_token(student_logits, teacher_ids, teacher_logprobs), labels != IGNORE_INDEX)


class SampledKD(nn.Module):
    """Random-sampling KD (`distill/sampling.py`): KL of the sparse importance-weighted target p̂ to the student's
    **full** softmax at temperature τ (times τ²), summed over the drawn tokens only. Not a divergence between two
    distributions (p̂ is sparse), but its gradient in the logits, τ·(s_τ − p̂), equals full forward KD's in
    expectation; nothing is renormalised on the student's side.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def per_token(self, student_logits, target_ids, target_log_weights) -> torch.Tensor:
        """Shapes: (N, V), (N, m) ids with -1 padding, (N, m) log p̂. Returns (N,)."""
        valid = target_ids >= 0  # (N, m)
        student = F.log_softmax(student_logits.float() / self.temperature, dim=-1)  # (N, V)
        student_drawn = student.gather(-1, target_ids.clamp(min=0))  # (N, m)
        target = target_log_weights.float()  # (N, m)
        terms = (target.exp() * (target - student_drawn)).masked_fill(~valid, 0.0)  # (N, m)
        return terms.sum(-1) * self.temperature**2

    def forward(self, student_logits, target_ids, target_log_weights, labels) -> torch.Tensor:
        return _masked_mean(self.per_token(student_logits, target_ids, target_log_weights), labels != IGNORE_INDEX)


class DenseKD(nn.Module):
    """KD against full teacher logits (teacher online): generalized JSD(β) at temperature τ, times τ²."""

    def __init__(self, temperature: float = 1.0, beta: float = 0.0):
        super().__init__()
        self.temperature, self.beta = temperature, beta

    def forward(self, student_logits, teacher_logits, labels) -> torch.Tensor:
        teacher = F.log_softmax(teacher_logits.float() / self.temperature, dim=-1)  # (N, V)
        student = F.log_softmax(student_logits.float() / self.temperature, dim=-1)  # (N, V)
        values = generalized_jsd(teacher, student, self.beta) * self.temperature**2
        return _masked_mean(values, labels != IGNORE_INDEX)


class HiddenStateMSE(nn.Module):
    """Hidden-state distillation for chosen (student layer, teacher layer) pairs, through a learned projection each.

    For a pair (s, t): ‖W·h_s − g_t‖² / ‖g_t‖² averaged over the masked positions, where h_s is the student's
    hidden state after layer s (0: the embeddings), g_t the teacher's after layer t, and W a trainable
    `(teacher_hidden, student_hidden)` map (FitNets). Dividing by the teacher state's own squared norm makes it
    scale-free: a projection that outputs zeros scores 1, a perfect one 0. The pairs' losses are averaged.
    """

    def __init__(self, student_size: int, teacher_size: int, pairs: list[tuple[int, int]]):
        super().__init__()
        if not pairs:
            raise ValueError("hidden-state distillation needs at least one (student layer, teacher layer) pair")
        self.pairs = [tuple(pair) for pair in pairs]
        self.projections = nn.ModuleList(nn.Linear(student_size, teacher_size, bias=False) for _ in self.pairs)

    def forward(self, student_states, teacher_states, mask: torch.Tensor) -> torch.Tensor:
        """States: sequences of `(B, T, H)` per layer (index 0 the embeddings); mask `(B, T)`. Returns a scalar."""
        if not mask.any():
            return self.projections[0].weight.sum() * 0.0
        losses = []
        for (student_layer, teacher_layer), projection in zip(self.pairs, self.projections, strict=True):
            student = projection(student_states[student_layer][mask].float())  # (N, H_teacher)
            teacher = teacher_states[teacher_layer][mask].detach().float()  # (N, H_teacher)
            error = (student - teacher).pow(2).sum(-1) / teacher.pow(2).sum(-1).clamp(min=1e-6)  # (N,)
            losses.append(error.mean())
        return torch.stack(losses).mean()


class HardLabelCE(nn.Module):
    def forward(self, student_logits, labels) -> torch.Tensor:
        mask = labels != IGNORE_INDEX
        if not mask.any():
            return student_logits.sum() * 0.0
        return F.cross_entropy(student_logits.float(), labels, ignore_index=IGNORE_INDEX)


class ChunkedKD(nn.Module):
    """α·KD + (1−α)·CE from the student's final hidden states, a chunk of tokens at a time.

    The student's lm_head is applied per chunk inside activation checkpointing: each chunk's `(chunk, V)` logits
    exist only while that chunk's loss (and, in backward, its gradient) is computed. Equal to the unchunked loss.
    """

    def __init__(self, kd: SparseKD | SampledKD, alpha: float = 0.5, chunk_tokens: int = 1024):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.kd, self.alpha, self.chunk_tokens = kd, alpha, chunk_tokens

    def forward(self, hidden: torch.Tensor, lm_head: nn.Module, teacher_ids: torch.Tensor,
                teacher_logprobs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shapes: hidden (N, H), teacher_ids/logprobs (N, k), labels (N,). Returns loss, kd_loss, ce_loss."""
        keep = labels != IGNORE_INDEX
        hidden, teacher_ids, teacher_logprobs, labels = hidden[keep], teacher_ids[keep], teacher_logprobs[keep], \
            labels[keep]
        count = labels.numel()
        if count == 0:
            zero = hidden.sum() * 0.0
            return {"loss": zero, "kd_loss": zero.detach(), "ce_loss": zero.detach()}
        kd_total, ce_total = hidden.new_zeros((), dtype=torch.float32), hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, count, self.chunk_tokens):
            chunk = slice(start, start + self.chunk_tokens)
            kd_sum, ce_sum = checkpoint(self._chunk, hidden[chunk], lm_head.weight, teacher_ids[chunk],
                                        teacher_logprobs[chunk], labels[chunk], use_reentrant=False)
            kd_total, ce_total = kd_total + kd_sum, ce_total + ce_sum
        kd_loss, ce_loss = kd_total / count, ce_total / count
        return {"loss": self.alpha * kd_loss + (1 - self.alpha) * ce_loss, "kd_loss": kd_loss.detach(),
                "ce_loss": ce_loss.detach()}

    def _chunk(self, hidden, weight, teacher_ids, teacher_logprobs, labels):
        logits = hidden.float() @ weight.float().T  # (chunk, V)
        kd_sum = self.kd.per_token(logits, teacher_ids, teacher_logprobs).sum()
        ce_sum = F.cross_entropy(logits, labels, reduction="sum")
        return kd_sum, ce_sum
