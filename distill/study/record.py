"""Which scores belong to a study, so a study outlives the machines it runs on.

Two keys. The study's key is the sha256 of the settings that decide what an arm is (the base, the ticket counts, the
teacher's fine-tuning, the pruning, every arm's training, top-k): scores under another are another study's, refused.
The teacher's key adds what one machine made of them: bf16 or not, and the teacher's weights, bit for bit (its
fine-tuning is deterministic on one kind of CPU, but not across kinds: AVX2 and AVX512 kernels round differently,
and bf16 is native on one and emulated on the other).

A seed is a replicate made with one teacher: every arm of a seed learns from the same teacher, so arm and baseline
still pair by seed. Seeds made with different teachers (on different machines) pool in one table, each seed's gap
measured against its own teacher. `scores_from` points at an earlier run's `evals/` (the project keeps its study's
in docs/study/evals): a seed scored there in full is taken and not trained again; a seed this machine's teacher
began is finished here; a seed another teacher began but did not finish is trained again here in full.

    evals/NAME.json                   each arm's score (NAME = ARM-sSEED), with both keys
    evals/teacher-KEY12/NAME.json     one teacher's own figures: its score, the pruned student's, its test answers
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from distill.study.settings import StudySettings

# what decides an arm's result; seeds, arms, out, threads, the eval batch size and bf16 (in the teacher's key) do not
KEYED = ("base", "train_tickets", "test_tickets", "top_k", "teacher", "student", "train")
TEACHER_ANSWERS = "teacher-answers.json"
SETTINGS = "study-settings.json"  # each study key's keyed settings: a refusal names the ones that differ


def keyed(settings: StudySettings) -> dict:
    return settings.model_dump(mode="json", include=set(KEYED))


def study_key(settings: StudySettings) -> str:
    return hashlib.sha256(json.dumps(keyed(settings), sort_keys=True).encode()).hexdigest()


def teacher_key(settings: StudySettings, teacher_dir: Path) -> str:
    digest = hashlib.sha256(f"{study_key(settings)} bf16={settings.bf16}".encode())
    for weights in sorted(teacher_dir.glob("*.safetensors")):
        with weights.open("rb") as file:
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()


def teacher_folder(teacher: str) -> str:
    return f"teacher-{teacher[:12]}"


def made_on() -> dict:
    """Where a score was made: which machine's teacher a seed learnt from."""
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

    def __init__(self, folder: Path, study: str, scores_from: Path | None, settings: dict | None = None):
        """`settings`: the keyed settings `study` hashes (`keyed`), filed beside the scores so that a refusal can
        name what differs."""
        self.folder, self.study, self.scores_from, self.settings = folder, study, scores_from, settings
        self.teacher: str | None = None  # this machine's, once trained (`with_teacher`)
        folder.mkdir(parents=True, exist_ok=True)
        self.taken: list[str] = []  # the names whose scores came from `scores_from`
        self._not_taken: set[str] = set()  # arms of a seed another teacher began: trained again here
        if scores_from is not None:
            self._check_source(scores_from)

    def with_teacher(self, teacher: str) -> Record:
        """This machine's teacher: what its own figures are filed under and what the seeds it trains learn from."""
        self.teacher = teacher
        own = teacher_folder(teacher)
        if self.scores_from is not None and (self.scores_from / own / TEACHER_ANSWERS).is_file():
            self._copy(f"{own}/{TEACHER_ANSWERS}")  # the test answers closeness is measured along
        return self

    def own(self, name: str) -> str:
        """NAME among this machine's teacher's own figures (the teacher's score, the pruned student's)."""
        return f"{teacher_folder(self.teacher)}/{name}"

    def score(self, name: str) -> dict | None:
        """NAME's score made under this study's key (copied from `scores_from` if only there), or None."""
        path = self.folder / f"{name}.json"
        if not path.is_file() and name not in self._not_taken and (source := self._from(name)) is not None:
            for file in (f"{name}.json", f"{name}-closeness.json"):
                self._copy(file)
            if source.get("teacher") and not name.startswith("teacher-"):
                self._copy_teacher(source["teacher"])  # that teacher's own figures come with its seeds
            self.taken.append(name)
        if not path.is_file():
            return None
        scored = json.loads(path.read_text())
        if scored.get("study") != self.study:
            made = str(scored.get("study"))
            raise ValueError(f"{path} was scored by a study with other settings (key {made[:12]}, this study "
                             f"{self.study[:12]}{self._differences(self.folder, made)}): run with the settings it "
                             "was made with, or remove it (and its -closeness.json) to score it again")
        return scored

    def write(self, name: str, scored: dict) -> dict:
        if self.settings is not None:
            path = self.folder / SETTINGS
            known = json.loads(path.read_text()) if path.is_file() else {}
            path.write_text(json.dumps({**known, self.study: self.settings}, indent=1, sort_keys=True))
        scored = {**scored, "study": self.study, "teacher": self.teacher, "made_on": made_on()}
        path = self.folder / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(scored, indent=1))
        return scored

    def complete(self, name: str) -> dict | None:
        """An arm's score with its closeness, when both are recorded: the arm need not be trained."""
        scored = self.score(name)
        if scored is None or "train_minutes" not in scored or not (self.folder / f"{name}-closeness.json").is_file():
            return None
        return scored

    def seed(self, names: list[str], log: Callable[[str], None]) -> str:
        """The teacher a seed's arms (`names`) learn from: the one that scored them all, where one did; else this
        machine's, which trains what is missing, after setting aside what another teacher began."""
        recorded = {name: self._recorded(name) for name in names}
        whole = self._whole(recorded)
        if whole is not None:
            return whole
        others = self._others(recorded)
        if others:
            made = sorted({str(recorded[name].get("teacher"))[:12] for name in others})
            log(f"{', '.join(others)}: made with another teacher ({', '.join(made)}) in a seed it did not finish; "
                "the seed is trained here in full, so its arms all learn from one teacher")
            for name in others:
                self._set_aside(name)
        return self.teacher

    def begun_elsewhere(self, names: list[str]) -> dict[str, str]:
        """The arms of a seed (`names`) that another teacher scored in a seed it did not finish, each with that
        teacher's key: `seed` would set them aside and train the whole seed here."""
        recorded = {name: self._recorded(name) for name in names}
        if self._whole(recorded) is not None:
            return {}
        return {name: str(recorded[name].get("teacher")) for name in self._others(recorded)}

    def _whole(self, recorded: dict[str, dict | None]) -> str | None:
        """The one teacher that scored every arm in `recorded` in full, or None."""
        teachers = {scored.get("teacher") for scored in recorded.values() if scored is not None}
        if len(teachers) == 1 and all(scored is not None and "train_minutes" in scored and self._has_closeness(name)
                                      for name, scored in recorded.items()):
            return teachers.pop()
        return None

    def _others(self, recorded: dict[str, dict | None]) -> list[str]:
        return [name for name, scored in recorded.items()
                if scored is not None and scored.get("teacher") != self.teacher]

    def teacher_score(self, teacher: str) -> dict:
        """A teacher's own score (copied from `scores_from` with the seeds it made)."""
        name = f"{teacher_folder(teacher)}/teacher"
        scored = self.score(name)
        if scored is None:
            raise ValueError(f"no score of teacher {teacher[:12]} in {self.folder} or {self.scores_from}: its seeds "
                             f"are in the table, so its {name}.json must be too; copy the whole evals/ folder")
        return scored

    def _recorded(self, name: str) -> dict | None:
        path = self.folder / f"{name}.json"
        if path.is_file():
            return self.score(name)
        return self._from(name)

    def _has_closeness(self, name: str) -> bool:
        return any((folder / f"{name}-closeness.json").is_file()
                   for folder in (self.folder, self.scores_from) if folder is not None)

    def _set_aside(self, name: str) -> None:
        self._not_taken.add(name)
        for file in (f"{name}.json", f"{name}-closeness.json"):
            if (self.folder / file).is_file():
                (self.folder / file).rename(self.folder / f"{file}.other-teacher")

    def _check_source(self, source: Path) -> None:
        """A `scores_from` none of whose scores can be used would be a setting silently ignored: refused."""
        if not source.is_dir():
            raise ValueError(f"scores_from: {source} is not a folder; give an earlier study's evals/ folder")
        keys = [json.loads(path.read_text()).get("study") for path in source.glob("*.json")
                if not path.name.endswith("-closeness.json") and path.name != SETTINGS]
        if keys and self.study not in keys:
            differ = self._differences(source, keys[0]) if len(set(keys)) == 1 else ""
            raise ValueError(f"scores_from: none of the {len(keys)} scores in {source} were made by this study (key "
                             f"{self.study[:12]}): they were made with other settings{differ}; run with the "
                             "settings they were made with, or without scores_from")

    def _differences(self, folder: Path, theirs: str) -> str:
        """`; they differ in teacher.steps: 100 there, 200 here`, where `folder` has the settings of key `theirs`."""
        path = folder / SETTINGS
        recorded = json.loads(path.read_text()).get(theirs) if path.is_file() else None
        if recorded is None or self.settings is None:
            return ""
        there, here = _flat(recorded), _flat(self.settings)
        differ = [f"{name}: {there.get(name)} there, {here.get(name)} here" for name in sorted({*there, *here})
                  if there.get(name) != here.get(name)]
        return f"; they differ in {', '.join(differ)}" if differ else ""

    def _from(self, name: str) -> dict | None:
        if self.scores_from is None:
            return None
        path = self.scores_from / f"{name}.json"
        if not path.is_file():
            return None
        scored = json.loads(path.read_text())
        return scored if scored.get("study") == self.study else None

    def _copy_teacher(self, teacher: str) -> None:
        """A teacher's own figures (its score, the pruned student's, its test answers), where `scores_from` has them."""
        folder = teacher_folder(teacher)
        if self.scores_from is not None and (self.scores_from / folder).is_dir():
            for path in (self.scores_from / folder).glob("*.json"):
                self._copy(f"{folder}/{path.name}")

    def _copy(self, file: str) -> None:
        target = self.folder / file
        if self.scores_from is not None and (self.scores_from / file).is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.scores_from / file, target)


def _flat(settings: dict, prefix: str = "") -> dict:
    """`{"teacher": {"steps": 100}}` as `{"teacher.steps": 100}`: the names `key=value` overrides take."""
    flat = {}
    for name, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat
