"""What a new student version must be before it is stored as a candidate: files that exist, a tokenizer that is the
serving student's and the teacher's, a routing policy that loads. Every refusal is a 400 naming the field."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.students.manager import StudentManager
from router.policy_file import load_policy
from runtime.errors import InvalidRequest
from runtime.settings import model_dir_problem
from runtime.store.versions import StudentVersion
from runtime.tokenizer_hash import tokenizer_hash

RESERVED_NAMES = {"status", "rollback"}  # path segments of the admin API


class Registration(BaseModel):
    """Exactly one of `model_dir`, `adapter_path`, `base_url` (with `served_model`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the version's name: letters, digits, `_.-`")
    model_dir: str | None = Field(default=None, description="a Hugging Face model folder (local students)")
    adapter_path: str | None = Field(default=None, description="a peft LoRA adapter folder over the configured "
                                     "student (local engine, or vLLM's runtime LoRA: a path the vLLM servers read)")
    base_url: str | None = Field(default=None, description="a server of its own, ending in /v1 (blue/green)")
    served_model: str | None = Field(default=None, description="with `base_url`: the model id it serves")
    policy_file: str | None = Field(default=None, description="the routing policy calibrated for this student "
                                    "(`kdgate router calibrate`)")
    handoff_min_prob: float | None = Field(default=None, gt=0, lt=1, description="the mid-stream handoff floor "
                                           "fitted to this student (the trainer refits it to the teacher-share "
                                           "target); null: the gateway's `routing.handoff.min_prob`")
    figures: dict | None = Field(default=None, description="what it was admitted with (the trainer's gate)")
    notes: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def check_one_source(self) -> Registration:
        given = [field for field in ("model_dir", "adapter_path", "base_url") if getattr(self, field)]
        if len(given) != 1:
            raise ValueError("give exactly one of `model_dir`, `adapter_path` or `base_url`, got "
                             f"{', '.join(given) or 'none'}")
        if self.base_url and not self.served_model:
            raise ValueError("`base_url` needs `served_model`, the model id that server serves")
        if self.name in RESERVED_NAMES:
            raise ValueError(f"`{self.name}` is reserved; choose another name")
        return self


def check_registration(registration: Registration, manager: StudentManager) -> StudentVersion:
    """The version to store, or `InvalidRequest` naming what is wrong (runs in a thread: it reads files)."""
    settings = manager.settings
    local_student = settings.student.kind == "local"
    tokenizer_dir = None
    if registration.model_dir:
        kind = "model"
        problem = model_dir_problem(Path(registration.model_dir))
        if problem:
            raise InvalidRequest(problem, parameter="model_dir")
        if not local_student:
            raise InvalidRequest("the student is served over HTTP (vLLM): register a LoRA adapter (`adapter_path`) "
                                 "or a server of its own (`base_url`), not a model folder", parameter="model_dir")
        tokenizer_dir = Path(registration.model_dir)
    elif registration.adapter_path:
        kind = "lora"
        adapter = Path(registration.adapter_path)
        if adapter.exists() or local_student:  # a vLLM server may read a path this gateway cannot see
            if not adapter.exists():
                raise InvalidRequest(f"{adapter} does not exist; give the folder `kdgate distill train` with "
                                     "`lora.enabled: true` wrote (its `model/adapter`)", parameter="adapter_path")
            if not (adapter / "adapter_config.json").is_file():
                raise InvalidRequest(f"{adapter} is not a peft adapter folder (no adapter_config.json); train one "
                                     "with `kdgate distill train` and `lora.enabled: true`", parameter="adapter_path")
            tokenizer_dir = adapter if _has_tokenizer(adapter) else (Path(settings.student.model_dir)
                                                                     if local_student else None)
    else:
        kind = "endpoint"
    if registration.policy_file:
        try:
            load_policy(Path(registration.policy_file))
        except (OSError, ValueError) as error:
            raise InvalidRequest(f"policy file {registration.policy_file}: {error}", parameter="policy_file") from None
    digest = tokenizer_hash(tokenizer_dir) if tokenizer_dir is not None and _has_tokenizer(tokenizer_dir) else None
    if digest is not None:
        _check_tokenizer(digest, manager)
    return StudentVersion(name=registration.name, kind=kind, model_dir=registration.model_dir,
                          adapter_path=registration.adapter_path, base_url=registration.base_url,
                          served_model=registration.served_model, tokenizer_hash=digest,
                          policy_file=registration.policy_file, handoff_min_prob=registration.handoff_min_prob,
                          figures=registration.figures, notes=registration.notes)


def _check_tokenizer(digest: str, manager: StudentManager) -> None:
    """The same token ids as the student serving now and as the teacher (when their tokenizers are readable)."""
    active = manager.versions.get(manager.slot.active.version)
    if active.tokenizer_hash and active.tokenizer_hash != digest:
        raise InvalidRequest(f"its tokenizer (hash {digest[:12]}…) differs from the active student "
                             f"`{active.name}`'s ({active.tokenizer_hash[:12]}…): token ids would mean other text; "
                             "distill it with the same tokenizer", parameter="tokenizer")
    teacher = manager.settings.teacher
    if teacher is not None and teacher.kind == "local" and _has_tokenizer(Path(teacher.model_dir)):
        teacher_digest = tokenizer_hash(Path(teacher.model_dir))
        if teacher_digest != digest:
            raise InvalidRequest(f"its tokenizer (hash {digest[:12]}…) differs from the teacher's "
                                 f"({teacher_digest[:12]}…): shadow scores and handoffs need one tokenizer",
                                 parameter="tokenizer")


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer.model"))
