"""The student's forward and its losses as one module: the thing accelerate wraps (DDP, FSDP).

Every parameter the loss touches, the lm_head's weight used chunk by chunk included, is used inside this module's
forward, so a data-parallel wrapper sees the whole computation (its gradient hooks and, for FSDP, its all-gathers
run), and evaluation goes through the same wrapper so every rank takes part. The optional hidden-state loss's
projections train with the student; the online teacher it reads is held outside the module tree (frozen, not
wrapped, not saved).
"""

from __future__ import annotations

import torch
from torch import nn

from distill.losses import IGNORE_INDEX, ChunkedKD, HiddenStateMSE, SparseKD


class DistillStep(nn.Module):
    def __init__(self, model: nn.Module, loss: ChunkedKD, hidden: HiddenStateMSE | None = None,
                 teacher: nn.Module | None = None, hidden_weight: float = 1.0, on_policy_loss: ChunkedKD | None = None):
        super().__init__()
        self.model, self.loss, self.hidden, self.hidden_weight = model, loss, hidden, hidden_weight
        self.on_policy_loss = on_policy_loss or loss  # the on-policy batches' own divergence, when it differs
        self._teacher = (teacher,) if teacher is not None else ()  # a tuple: not a submodule

    def forward(self, batch: dict[str, torch.Tensor], evaluate: bool = False,
                on_policy: bool = False) -> dict[str, torch.Tensor]:
        return self._evaluate(batch) if evaluate else self._losses(batch, self.on_policy_loss if on_policy
                                                                   else self.loss)

    def _losses(self, batch: dict[str, torch.Tensor], loss: ChunkedKD) -> dict[str, torch.Tensor]:
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        out = decoder(**inputs, output_hidden_states=self.hidden is not None)
        hidden = out.last_hidden_state
        size, k = hidden.shape[-1], batch["teacher_ids"].shape[-1]
        # position t predicts token t+1: shift the targets, not the hidden states' meaning
        losses = loss(hidden[:, :-1].reshape(-1, size), head, batch["teacher_ids"][:, 1:].reshape(-1, k),
                      batch["teacher_logprobs"][:, 1:].reshape(-1, k), batch["labels"][:, 1:].reshape(-1))
        if self.hidden is not None:
            with torch.no_grad():
                teacher_states = self._teacher[0].get_decoder()(**inputs, output_hidden_states=True).hidden_states
            hidden_loss = self.hidden(out.hidden_states, teacher_states, batch["labels"] != IGNORE_INDEX)
            losses["loss"] = losses["loss"] + self.hidden_weight * hidden_loss
            losses["hidden_loss"] = hidden_loss.detach()
        return losses

    def _evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sums, so ranks can add them: top-1 agreements with the teacher's tokens, tokens, and the sparse KL."""
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits, labels = logits[:, :-1], batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        kl = SparseKD(1.0).per_token(logits[mask], batch["teacher_ids"][:, 1:][mask],
                                     batch["teacher_logprobs"][:, 1:][mask])
        return {"agree": ((logits.argmax(-1) == labels) & mask).sum().float(), "tokens": mask.sum().float(),
                "kl": kl.sum().float()}
