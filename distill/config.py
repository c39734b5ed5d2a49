"""The training config: YAML plus `key=value` overrides, unknown keys rejected, saved resolved in every checkpoint.

    kdgate distill train --config distill/configs/demo_kd.yaml steps=200 loss.alpha=0.7
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StudentConfig(_Strict):
    init: Path = Field(description="a Hugging Face model folder: the student's weights and tokenizer")
    from_scratch: bool = Field(default=False, description="re-initialise the weights from `init`'s config (seeded): "
                               "the same start for a KD run and its SFT baseline")


class HiddenConfig(_Strict):
    """Hidden-state distillation (`HiddenStateMSE`): the teacher model runs online beside the cache's logprobs."""

    teacher: Path | None = Field(default=None, description="the teacher's Hugging Face folder (same tokenizer as "
                                 "the student); unset: no hidden-state loss")
    layers: list[tuple[int, int]] = Field(default_factory=list, description="(student layer, teacher layer) pairs; "
                                          "0 is the embeddings, L the last layer's output, e.g. [[1, 3], [2, 6]]")
    weight: float = Field(default=1.0, ge=0, description="added to the loss as weight × the pairs' mean error")

    @model_validator(mode="after")
    def _layers_with_teacher(self):
        if self.teacher is not None and not self.layers:
            raise ValueError("loss.hidden.teacher is set but loss.hidden.layers is empty; name the layer pairs, "
                             "e.g. loss.hidden.layers=[[1,3],[2,6]]")
        return self


class OnPolicyConfig(_Strict):
    """On-policy distillation (GKD, Agarwal et al. 2024): the student samples the answers, an online teacher scores
    every token of them (its top-k at each position), and the KD loss pulls the student there."""

    teacher: Path | None = Field(default=None, description="the teacher's Hugging Face folder (the cache's "
                                 "tokenizer); unset: off-policy, the cache's answers only")
    share: float = Field(default=1.0, ge=0, le=1, description="λ: the share of micro-batches whose answers the "
                         "student samples; the rest train on the cache's answers")
    temperature: float = Field(default=1.0, gt=0, description="the student's sampling temperature")
    max_new_tokens: int = Field(default=128, ge=1, description="longest sampled answer")
    start_step: int = Field(default=0, ge=0, description="on-policy batches only from this step on, the cache's "
                            "answers before it: a student that cannot yet write the answers' format learns nothing "
                            "of it from its own samples (GKD and on-policy distillation start from a trained student)")
    divergence: Literal["forward", "reverse", "jsd"] | None = Field(
        default=None, description="the divergence of the on-policy batches (with loss.beta for jsd); unset: "
        "loss.divergence. Reverse KL (mode-seeking) suits a student near the teacher, forward KL one far from it")


class LossConfig(_Strict):
    kind: Literal["kd", "sft"] = Field(default="kd", description="sft: hard-label CE on the teacher's answers only")
    temperature: float = Field(default=1.0, gt=0, description="τ: both sides tempered, loss × τ²")
    alpha: float = Field(default=0.5, ge=0, le=1, description="α·KD + (1−α)·CE; sft ignores it (α=0)")
    divergence: Literal["forward", "reverse", "jsd"] = Field(
        default="forward", description="forward KL(teacher ‖ student) covers the teacher's modes; reverse KL seeks "
        "one; jsd mixes both by `beta` (0: forward, 1: reverse)")
    beta: float = Field(default=0.5, ge=0, le=1, description="jsd: the mixture weight of the teacher")
    chunk_tokens: int = Field(default=1024, ge=1, description="tokens whose logits exist at once")
    top_k: int | None = Field(default=None, ge=1, description="use the cache's first k alternatives per token "
                              "(the top-k of a greedy cache); unset: all the cache holds")
    estimator: Literal["topk", "sampled"] = Field(
        default="topk", description="topk: the cached top-k plus a tail bucket; sampled: `draws` tokens per position "
        "importance-sampled from the cache (Anshumann et al. 2025), unbiased, forward KL only")
    draws: int = Field(default=8, ge=1, description="sampled: draws per answer token (distinct ones are kept)")
    proposal_temperature: float = Field(default=1.0, gt=0, description="sampled: q ∝ p_τ^(1/t); t > 1 draws rarer "
                                        "tokens")
    resample: bool = Field(default=False, description="sampled: fresh draws every time an answer is used (the "
                           "cache's top-K stays in memory) instead of once, as a sampled cache on disk would hold")
    hidden: HiddenConfig = Field(default_factory=HiddenConfig)
    on_policy: OnPolicyConfig = Field(default_factory=OnPolicyConfig)

    @model_validator(mode="after")
    def _sampled_is_forward(self):
        if self.estimator == "sampled" and self.divergence != "forward":
            raise ValueError("the sampled estimator is unbiased for forward KL only; set loss.divergence=forward "
                             "or loss.estimator=topk")
        if self.on_policy.teacher is not None and (self.estimator != "topk" or self.kind != "kd"):
            raise ValueError("loss.on_policy scores the student's samples with the teacher's top-k: it needs "
                             "loss.kind=kd and loss.estimator=topk")
        return self


class LoraConfig(_Strict):
    enabled: bool = Field(default=False, description="train LoRA adapters (peft) instead of every weight; merged "
                          "into the model on export, and saved alone in `model/adapter/` for vLLM's runtime LoRA")
    r: int = Field(default=16, ge=1, description="adapter rank; vLLM serves up to --max-lora-rank (default 16)")
    alpha: int = Field(default=32, ge=1, description="scale of the adapter's update (alpha / r)")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"],
                                      description="module names that get adapters (Llama-style names)")


class OptimConfig(_Strict):
    lr: float = Field(default=1e-3, gt=0, description="AdamW's peak learning rate, reached after the warmup")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW's decoupled weight decay")
    warmup_steps: int = Field(default=100, ge=0, description="linear warmup from 0; then cosine decay")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="the cosine ends at lr × this; 1 keeps lr "
                                "constant after the warmup")
    max_grad_norm: float = Field(default=1.0, gt=0, description="gradients clipped to this global norm")


class TrainConfig(_Strict):
    student: StudentConfig
    cache: Path = Field(description="teacher cache folder from `kdgate distill generate`")
    out: Path = Field(description="run folder: checkpoints, the final model, the training log")
    loss: LossConfig = Field(default_factory=LossConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    steps: int = Field(default=1000, ge=1, description="optimizer steps")
    batch_size: int = Field(default=32, ge=1, description="answers per micro-batch")
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per optimizer step")
    bf16: bool = Field(default=False, description="autocast; on CPUs without AMX it is slower than fp32")
    train_examples: int | None = Field(default=None, ge=1, description="train on the first N kept answers after "
                                       "the held-out split (a data-size ablation); unset: all")
    eval_every: int = Field(default=200, ge=1, description="steps between held-out evaluations")
    eval_fraction: float = Field(default=0.05, gt=0, lt=1, description="share of the cache held out for eval")
    early_stopping_patience: int = Field(default=0, ge=0, description="evals without a better teacher agreement "
                                         "before stopping; 0: never stop early")
    checkpoint_every: int = Field(default=200, ge=1, description="steps between checkpoints (a rerun resumes from "
                                  "the last)")
    seed: int = Field(default=0, description="picks the initialisation (from_scratch), the held-out split and the "
                      "batch order")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads")

    @model_validator(mode="after")
    def _on_policy_starts_before_the_end(self):
        on_policy = self.loss.on_policy
        if on_policy.teacher is not None and on_policy.start_step >= self.steps:
            raise ValueError(f"loss.on_policy.start_step is {on_policy.start_step} but training stops at step "
                             f"{self.steps}: no batch would be on-policy; lower it, or unset loss.on_policy.teacher")
        return self


def load_config(path: Path | None, overrides: list[str]) -> TrainConfig:
    raw = yaml.safe_load(Path(path).read_text()) if path else {}
    return validated(TrainConfig, apply_overrides(raw, overrides, "loss.alpha=0.7"), "training config")


def command_overrides(arguments: list[str]) -> list[str]:
    """The `key=value` arguments after a command's options; a stray `--flag` is a mistyped option (ValueError)."""
    for argument in arguments:
        if argument.startswith("-"):
            raise ValueError(f"no such option: {argument.split('=')[0]}; after the options come `key=value` "
                             "overrides (e.g. steps=400)")
    return list(arguments)


def apply_overrides(raw: dict, overrides: list[str], example: str) -> dict:
    """`raw` with each `a.b=value` set (the value parsed as YAML)."""
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ValueError(f"override {override!r} is not key=value (e.g. {example})")
        _set(raw, key.split("."), yaml.safe_load(value))
    return raw


def validated(model: type[BaseModel], raw: dict, what: str):
    """`model` from `raw`, or a ValueError naming every field at fault."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())
        raise ValueError(f"{what}: {problems}") from None


def _set(tree: dict, keys: list[str], value) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise ValueError(f"`{key}` is not a section; cannot set {'.'.join(keys)}")
    tree[keys[-1]] = value
