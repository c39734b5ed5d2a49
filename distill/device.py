"""Where the offline evaluations run (scoring, the gate's figures, the study's caches and closeness): on the GPU that
torch sees, as the trainer's Accelerator does, else on the CPU. A model is put there by `distill.evaluate.load`, and
every evaluation moves its batches to the model's own device, so a model placed elsewhere by the caller is honoured."""

from __future__ import annotations

import torch


def inference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
