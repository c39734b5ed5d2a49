"""Which scores belong to a study, so a study outlives the machine it ran on.

A model's score is kept with the study's key: the sha256 of the settings that decide what an arm is (the base, the
ticket counts, the teacher's fine-tuning, the pruning, every arm's training, top-k, bf16) and of the teacher's
weights (the teacher this run actually trained, bit for bit: its fine-tuning is deterministic on a given machine
kind, its cached answers are not quite, a logprob one float16 step apart where the engine batched differently). A
score is used only under the key it was made with: a rerun with other sizes, or whose teacher came out different,
is refused rather than tabulated beside scores it cannot be compared with.

`scores_from` points at an earlier run's `evals/` (the project keeps its study's in docs/study/evals): an arm scored
there under this key is copied in and not trained again, so seeds run on different days, on fresh machines, add up
to one table. The teacher is trained again on each machine (its weights are not kept), and must come out the same.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from distill.study.settings import StudySettings

# what decides an arm's result; seeds, arms, out, threads and the eval batch size do not
KEYED = ("base", "train_tickets", "test_tickets", "top_k", "teacher", "student", "train", "bf16")
TEACHER_ANSWERS = "teacher-answers.json"


def study_key(settings: StudySettings, teacher_dir: Path) -> str:
    digest = hashlib.sha256(json.dumps(settings.model_dump(mode="json", include=set(KEYED)),
                                       sort_keys=True).encode())
    for weights in sorted(teacher_dir.glob("*.safetensors")):
        with weights.open("rb") as file:
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()


def made_on() -> dict:
    """Where a score was made: when another machine's teacher comes out different, this says what differed."""
    import platform

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in _cpuinfo() if line.startswith("flags")), [])
    return {"cpu": cpu or platform.processor(), "avx512": any(flag.startswith("avx512") for flag in flags),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.is_file() else []


class Record:
    """The scores in `out/evals/`, checked against the study's key, filled from `scores_from` where it has them."""

    def __init__(self, folder: Path, key: str, scores_from: Path | None):
        self.folder, self.key, self.scores_from = folder, key, scores_from
        folder.mkdir(parents=True, exist_ok=True)
        self.taken: list[str] = []  # the names whose scores came from `scores_from`
        if scores_from is not None:
            if self._check_source(scores_from):
                self._copy(TEACHER_ANSWERS)  # the teacher's test answers, which closeness is measured along

    def score(self, name: str) -> dict | None:
        """NAME's score made under this key (copied from `scores_from` if only there), or None."""
        path = self.folder / f"{name}.json"
        if not path.is_file() and self._from(name) is not None:
            for file in (f"{name}.json", f"{name}-closeness.json"):
                self._copy(file)
            self.taken.append(name)
        if not path.is_file():
            return None
        scored = json.loads(path.read_text())
        if scored.get("study") != self.key:
            made = str(scored.get("study"))[:12]
            raise ValueError(f"{path} was scored by a study with other settings or another teacher (key {made}, "
                             f"this study {self.key[:12]}): run with the settings it was made with, or remove it "
                             "(and its -closeness.json) to score it again")
        return scored

    def write(self, name: str, scored: dict) -> dict:
        scored = {**scored, "study": self.key, "made_on": made_on()}
        (self.folder / f"{name}.json").write_text(json.dumps(scored, indent=1))
        return scored

    def complete(self, name: str) -> dict | None:
        """An arm's score with its closeness, when both are recorded: the arm need not be trained."""
        scored = self.score(name)
        if scored is None or "train_minutes" not in scored or not (self.folder / f"{name}-closeness.json").is_file():
            return None
        return scored

    def _check_source(self, source: Path) -> bool:
        """A `scores_from` none of whose scores can be used would be a setting silently ignored: refused."""
        if not source.is_dir():
            raise ValueError(f"scores_from: {source} is not a folder; give an earlier study's evals/ folder")
        keys = [json.loads(path.read_text()).get("study") for path in source.glob("*.json")
                if not path.name.endswith("-closeness.json") and path.name != TEACHER_ANSWERS]
        if keys and self.key not in keys:
            raise ValueError(f"scores_from: none of the {len(keys)} scores in {source} were made by this study (key "
                             f"{self.key[:12]}): other settings, or a teacher that came out different here (the key "
                             "hashes its weights); run with the settings they were made with, or without "
                             "scores_from")
        return bool(keys)

    def _from(self, name: str) -> dict | None:
        if self.scores_from is None or not (self.scores_from / f"{name}-closeness.json").is_file():
            return None
        path = self.scores_from / f"{name}.json"
        if not path.is_file():
            return None
        scored = json.loads(path.read_text())
        return scored if scored.get("study") == self.key else None

    def _copy(self, file: str) -> None:
        if self.scores_from is not None and (self.scores_from / file).is_file() and not (self.folder / file).exists():
            shutil.copyfile(self.scores_from / file, self.folder / file)
