"""The study's summary from its recorded scores: what a run writes after every seed, and what
`kdgate distill study --table EVALS` prints from an evals/ folder alone, training nothing (the project's own table
from docs/study/evals, for instance, without the study's first stages).

Both read the same files, so both print the same table:

    evals/ARM-sSEED.json, ARM-sSEED-closeness.json    each arm's score and its closeness to its teacher
    evals/base.json                                   the base checkpoint's score
    evals/teacher-KEY12/*.json                        each teacher's own figures, its soft labels among them
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.study.record import Record, keyed, study_key, teacher_folder
from distill.study.report import BASELINE, summarise
from distill.study.settings import StudySettings

SOFT_LABELS = "soft-labels.json"


def summary(settings: StudySettings, record: Record, scores: dict) -> dict:
    """The summary of `scores` (each arm's score by ARM-sSEED, with its `closeness`) over `settings`' seeds."""
    seed_teachers = list(dict.fromkeys(scores[f"{BASELINE}-s{seed}"]["teacher"] for seed in settings.seeds))
    figures = {key: _teacher_figures(record, key) for key in
               {scores[f"{arm}-s{seed}"]["teacher"] for arm in settings.arms for seed in settings.seeds}}
    return summarise(settings, scores, figures, record.score("base")["exact_match"],
                     *_soft_labels(record.folder, seed_teachers))


def from_scores(settings: StudySettings, evals: Path) -> dict:
    """The summary of the scores recorded in `evals` for `settings`' seeds and arms; refused, naming them, where a
    score is missing or a seed's arms were made with more than one teacher."""
    if not evals.is_dir():
        raise ValueError(f"--table: {evals} is not a folder; give a study's evals/ folder (docs/study/evals)")
    record = Record(evals, study_key(settings), None, keyed(settings))
    scores, missing = {}, []
    for seed in settings.seeds:
        names = [f"{arm}-s{seed}" for arm in settings.arms]
        for name in names:
            scored = record.complete(name)
            if scored is None:
                missing.append(name)
            else:
                scores[name] = {**scored, "closeness": json.loads((evals / f"{name}-closeness.json").read_text())}
        made = {scores[name]["teacher"][:12] for name in names if name in scores}
        if len(made) > 1:
            raise ValueError(f"seed {seed}: its arms were made with {len(made)} teachers ({', '.join(sorted(made))}),"
                             " so they do not pair; a run finishes such a seed with one teacher (retrain_begun=true)")
    if missing:
        raise ValueError(f"{evals} has no score of {', '.join(missing)} under this study's key "
                         f"({record.study[:12]}; each with its -closeness.json): train them with `kdgate distill "
                         f"study scores_from={evals}`, or leave those seeds or arms out (seeds=[...] arms=[...])")
    return summary(settings, record, scores)


def keep_soft_labels(record: Record, soft: dict) -> None:
    """This machine's teacher's soft-label figures, filed with its other figures (and copied with its seeds)."""
    path = record.folder / record.own(SOFT_LABELS)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(soft, indent=1))


def _soft_labels(folder: Path, seed_teachers: list[str]) -> tuple[dict | None, dict | None]:
    """The soft-label figures of the first seed's teacher that has them recorded, else of any teacher recorded in
    `folder` (the same settings, another machine), with which teacher's they are."""
    recorded = sorted(path.parent.name.removeprefix("teacher-") for path in folder.glob(f"teacher-*/{SOFT_LABELS}"))
    ours = [key for key in seed_teachers if key[:12] in recorded]
    if ours:
        key = ours[0][:12]
    elif recorded:
        key = recorded[0]
    else:
        return None, None
    soft = json.loads((folder / teacher_folder(key) / SOFT_LABELS).read_text())
    return soft, {"key": key}


def _teacher_figures(record: Record, teacher: str) -> dict:
    """One teacher's score, where it was made, and its pruned student's score and closeness before training."""
    folder = teacher_folder(teacher)
    init = record.score(f"{folder}/student-init")
    closeness = record.folder / folder / "student-init-closeness.json"
    return {"score": record.teacher_score(teacher), "student_init": init["exact_match"] if init else None,
            "student_init_closeness": json.loads(closeness.read_text()) if closeness.is_file() else None}
