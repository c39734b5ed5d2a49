"""The calibrated policy as a small versioned JSON file: written by `kdgate router calibrate`, loaded by the gateway.

It holds everything the gateway needs to reproduce the decision (prefix length, alternatives per token, the scorer
with its fitted numbers, the threshold) and how it was calibrated (data, size, target, realised fraction), so a
routing change can be reviewed like a code change and rolled back by pointing at the previous file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.confidence import ConfidencePolicy
from router.online import OnlineRecalibration, OnlineSettings
from router.scorers import IsotonicScorer, LogisticScorer, SignalScorer

FORMAT = "kdgate-router-policy"
VERSION = 1


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="where the calibration records came from")
    examples: int = Field(ge=1)
    target_teacher_fraction: float = Field(ge=0, le=1)
    realised_teacher_fraction: float = Field(ge=0, le=1, description="on the calibration records themselves")
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    format: Literal["kdgate-router-policy"] = FORMAT
    version: Literal[1] = VERSION
    policy: Literal["confidence"] = "confidence"
    prefix_tokens: int | None = Field(ge=1, description="tokens held back before deciding; null: the whole answer")
    top_logprobs: int = Field(default=5, ge=1, le=20, description="alternatives per token the signals use")
    scorer: Annotated[SignalScorer | LogisticScorer | IsotonicScorer, Field(discriminator="kind")]
    threshold: float = Field(description="a score below it escalates to the teacher")
    calibration: Calibration


def save_policy(policy: PolicyFile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(policy.model_dump_json(indent=1) + "\n")


def load_policy(path: Path) -> PolicyFile:
    """Read and validate a policy file; every failure names the file and what to do."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"routing policy file {path} does not exist; write one with `kdgate router calibrate`") \
            from None
    except json.JSONDecodeError as error:
        raise ValueError(f"routing policy file {path} is not JSON ({error}); recreate it with "
                         "`kdgate router calibrate`") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{path} is not a kdgate routing policy (no `\"format\": \"{FORMAT}\"`)")
    if raw.get("version") != VERSION:
        raise ValueError(f"{path} is policy format version {raw.get('version')}; this kdgate reads version "
                         f"{VERSION}: recalibrate with this version's `kdgate router calibrate`")
    try:
        return PolicyFile.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"routing policy file {path} is invalid: {error}") from None


def policy_from_file(policy: PolicyFile, online: OnlineSettings | None = None) -> ConfidencePolicy:
    """The live policy; with `online`, its threshold then follows traffic toward `online.target_teacher_fraction`."""
    return ConfidencePolicy(policy.scorer, policy.threshold, policy.prefix_tokens, policy.top_logprobs,
                            online=OnlineRecalibration(online) if online is not None else None,
                            target_teacher_fraction=policy.calibration.target_teacher_fraction)
