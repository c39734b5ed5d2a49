"""The study from a pretrained checkpoint to its table; each stage is skipped when its result is in `out`.

    out/base/            the imported checkpoint (unless `base` is a model folder)
    out/teacher-data/    ground truth for the teacher's fine-tuning (every training ticket)
    out/teacher/model    the teacher: the whole base model fine-tuned on ground truth by the recipe
    out/student-init/    the teacher depth-pruned (Block Influence): every arm's starting point
    out/teacher-cache/   the teacher's greedy answers with top-k logprobs on the training tickets
    out/gold-cache/      ground truth on exactly the prompts the teacher cache kept, in its order
    out/truth-cache/     and the teacher's top-k teacher-forced along it (only for an arm that learns from it)
    out/runs/ARM-sSEED/  each arm's run (its checkpoint removed once the model is written)
    out/evals/NAME.json  each arm's score on the held-out tickets (NAME = ARM-sSEED), and base.json, under the
                         study's key and the teacher's (record.py: a seed scored there, or in `scores_from`, is not
                         trained again; seeds made with other machines' teachers pool with this machine's)
    out/evals/teacher-KEY12/        this machine's teacher's own figures: its score, the pruned student's, its
                                    soft labels (tabulate.py)
    out/evals/NAME-closeness.json   and how close each is to its teacher there (closeness.py)
    out/study.json, out/study.md
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from distill.config import TrainConfig
from distill.data.cache import CachedAnswer, Manifest, read_answers, write_shard
from distill.study import soft_labels, tabulate
from distill.study.arms import ARMS
from distill.study.closeness import Closeness
from distill.study.record import TEACHER_ANSWERS, Record, keyed, study_key, teacher_key
from distill.study.report import table
from distill.study.settings import StudySettings, resolved
from distill.study.truth_cache import truth_cache

Log = Callable[[str], None]


def run_study(settings: StudySettings, log: Log = print) -> dict:
    settings = _precision(settings, log)
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    # scores_from of another study is refused now, before anything is trained
    record = Record(out / "evals", study_key(settings), settings.scores_from, keyed(settings))
    (out / "settings.json").write_text(settings.model_dump_json(indent=1))
    from distill.demo import task

    train = task.take("train", settings.train_tickets, seed=0)
    test = task.take("test", settings.test_tickets, seed=0)
    base = _base(settings, log)
    teacher_data = _gold_cache(out / "teacher-data", base, {str(index): ticket for index, ticket in enumerate(train)})
    teacher = _teacher(settings, base, teacher_data, log)
    record.with_teacher(teacher_key(settings, teacher))
    _refuse_begun_seeds(settings, record)
    student_init = _prune(settings, teacher, teacher_data, log)
    teacher_cache = _teacher_cache(settings, teacher, train, log)
    kept = [answer.prompt_id for answer in read_answers(teacher_cache, settings.top_k)]
    gold = _gold_cache(out / "gold-cache", base, {prompt_id: train[int(prompt_id)] for prompt_id in kept})
    caches = {"gold": gold, "teacher": teacher_cache}
    if any(ARMS[arm].cache == "truth" for arm in settings.arms):
        caches["truth"] = truth_cache(out / "truth-cache", gold, teacher, settings.top_k, settings.threads, log)
    tabulate.keep_soft_labels(record, soft_labels.measured(out, teacher_cache, teacher, settings.top_k))
    _evaluate(settings, record, "base", base, test, log)
    _evaluate(settings, record, record.own("teacher"), teacher, test, log, bf16=settings.bf16)
    _evaluate(settings, record, record.own("student-init"), student_init, test, log)
    closeness = Closeness(out / "evals", record.own(TEACHER_ANSWERS), teacher, test, settings.threads, log)
    closeness.of(record.own("student-init"), student_init)
    scores = {}
    for done, seed in enumerate(settings.seeds, start=1):
        names = {arm: f"{arm}-s{seed}" for arm in settings.arms}
        record.seed(list(names.values()), log)
        for arm, name in names.items():
            scored = record.complete(name)
            if scored is None:
                model, minutes = _train_arm(settings, arm, seed, caches, teacher, student_init, log)
                scored = _evaluate(settings, record, name, model, test, log, train_minutes=minutes)
                scored["closeness"] = closeness.of(name, model)
            else:
                scored["closeness"] = closeness.of(name, None)
                if name in record.taken:
                    log(f"{name}: scored in {settings.scores_from}, not trained again")
            scores[name] = scored
        # the table so far after every seed: a study of hours shows where it stands while it runs, or once stopped
        summary = _write_summary(settings.model_copy(update={"seeds": settings.seeds[:done]}), record, scores)
        if done < len(settings.seeds):
            log(f"seed {seed} done: the table over seeds {', '.join(map(str, settings.seeds[:done]))} is in "
                f"{out / 'study.md'}")
    return summary


def _refuse_begun_seeds(settings: StudySettings, record: Record) -> None:
    """A seed another machine's teacher began and did not finish for these arms is trained again in full here (a
    seed's arms learn from one teacher), its earlier scores set aside: only when asked for, and said before any arm
    is trained. (Naming an arm that a finished seed lacks is the easy way to walk into it.)"""
    begun = {seed: record.begun_elsewhere([f"{arm}-s{seed}" for arm in settings.arms]) for seed in settings.seeds}
    begun = {seed: names for seed, names in begun.items() if names}
    if not begun or settings.retrain_begun:
        return
    which = "; ".join(f"seed {seed} ({', '.join(f'{name} by teacher {by[:12]}' for name, by in names.items())})"
                      for seed, names in begun.items())
    rest = [str(seed) for seed in settings.seeds if seed not in begun]
    leave = f"Leave them out (seeds=[{','.join(rest)}])" if rest else "Ask for other seeds"
    raise ValueError(
        f"{which}: another machine's teacher began these seeds and did not score every arm asked for here "
        f"({', '.join(settings.arms)}). Training the rest here would set those scores aside and train those arms "
        f"again with this machine's teacher ({record.teacher[:12]}), since a seed's arms all learn from one "
        f"teacher. {leave}, ask only for the arms they have, or set retrain_begun=true to train them again here")


def _write_summary(settings: StudySettings, record: Record, scores: dict) -> dict:
    summarised = tabulate.summary(settings, record, scores)
    (settings.out / "study.json").write_text(json.dumps(summarised, indent=1))
    (settings.out / "study.md").write_text(table(summarised))
    return summarised


def _precision(settings: StudySettings, log: Log) -> StudySettings:
    """bf16 decided for this machine when unset, and said: it is in the teacher's key, so a seed's arms all share it
    (seeds made with the other choice, on other machines, pool with these, each with its own teacher)."""
    from distill.precision import cpu_capability

    chosen = resolved(settings)
    if settings.bf16 is None:
        log(f"bf16 autocast: {'on' if chosen.bf16 else 'off'} (unset; torch's CPU kernels here: {cpu_capability()}, "
            f"{'with' if chosen.bf16 else 'without'} native bf16); set bf16=true or bf16=false to choose")
    return chosen


def _base(settings: StudySettings, log: Log) -> Path:
    given = Path(settings.base)
    if (given / "config.json").is_file():
        return given
    folder = settings.out / "base"
    if (folder / "config.json").is_file():
        return folder
    from distill.importer import import_checkpoint

    partial = folder.with_name("base.partial")
    shutil.rmtree(partial, ignore_errors=True)
    import_checkpoint(settings.base, partial, progress=log)
    partial.rename(folder)
    return folder


def _gold_cache(folder: Path, tokenizer_dir: Path, tickets: dict) -> Path:
    """A cache of ground-truth answers: each token's one "alternative" is itself, at logprob 0 (a one-hot
    teacher), so `loss.kind=sft` on it is hard-label SFT through the same recipe as every other arm."""
    if (folder / "manifest.json").is_file():
        return folder
    from transformers import AutoTokenizer

    from runtime.tokenizer_hash import tokenizer_hash

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    answers = []
    for prompt_id, ticket in tickets.items():
        text = ticket.answer_json()
        ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
                         dtype=np.int32)
        answers.append(CachedAnswer(prompt_id, 0, ticket.messages(), text, "stop", ids, ids[:, None],
                                    np.zeros((len(ids), 1), dtype=np.float16), reference=text))
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_shard(partial, 0, answers)
    Manifest(teacher="ground truth", tokenizer_hash=tokenizer_hash(tokenizer_dir), top_k=1, temperature=0.0,
             samples_per_prompt=1, seed=0, prompts=f"demo train tickets ({len(answers)})", rows=len(answers),
             kept=len(answers)).save(partial)
    partial.rename(folder)
    return folder


def _recipe(settings: StudySettings, init: Path, cache: Path, out: Path, loss: dict, steps: int, lr: float,
            warmup: int, batch_size: int, seed: int) -> Path:
    """Run the recipe unless its model is there; returns the model folder (checkpoint removed once written)."""
    from distill.config import validated
    from distill.recipe import run

    model = out / "model"
    if (model / "config.json").is_file():
        return model
    config = validated(TrainConfig, {
        "student": {"init": str(init)}, "cache": str(cache), "out": str(out), "loss": loss,
        "optim": {"lr": lr, "warmup_steps": warmup}, "steps": steps, "batch_size": batch_size, "bf16": settings.bf16,
        "eval_every": steps, "eval_fraction": 0.02, "checkpoint_every": max(10, steps // 4), "seed": seed,
        "threads": settings.threads}, "study run")
    run(config)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return model


def _teacher(settings: StudySettings, base: Path, data: Path, log: Log) -> Path:
    log(f"teacher: {base} fine-tuned on {settings.train_tickets} tickets ({settings.teacher.steps} steps)")
    spec = settings.teacher
    return _recipe(settings, base, data, settings.out / "teacher", {"kind": "sft"}, spec.steps, spec.lr,
                   spec.warmup_steps, spec.batch_size, seed=0)


def _prune(settings: StudySettings, teacher: Path, data: Path, log: Log) -> Path:
    folder = settings.out / "student-init"
    if (folder / "config.json").is_file():
        return folder
    from distill.prune import prune
    from distill.quantize import calibration_texts

    report = prune(teacher, folder, settings.student.keep, settings.student.by, calibration_texts(teacher, data, 64))
    log(f"student: blocks {report['kept']} of {report['blocks']} ({report['parameters'] / 1e6:.1f}M parameters)")
    return folder


def _teacher_cache(settings: StudySettings, teacher: Path, train: list, log: Log) -> Path:
    folder = settings.out / "teacher-cache"
    manifest = folder / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text())["rows"] == len(train):
        return folder
    from distill.data.generate import GenerateSettings, Prompt
    from distill.data.make import Filters, Teacher, make_cache
    from distill.demo.task import ANSWER_FIELDS

    log(f"teacher cache: greedy answers and top-{settings.top_k} on {len(train)} tickets")
    prompts = [Prompt(str(index), ticket.messages(), ticket.answer_json()) for index, ticket in enumerate(train)]
    made = make_cache(folder, prompts, f"demo train tickets ({len(train)})",
                      Teacher(teacher, threads=settings.threads),
                      GenerateSettings(top_k=settings.top_k, max_tokens=128, concurrency=32),
                      # wrong answers are kept: SFT on the teacher's answers learns its mistakes too
                      Filters(json_fields=ANSWER_FIELDS, check_reference=False))
    log(f"teacher cache: kept {made.kept} of {made.rows} ({made.dropped or 'none dropped'})")
    return folder


def _train_arm(settings: StudySettings, arm: str, seed: int, caches: dict, teacher: Path, student_init: Path,
               log: Log) -> tuple[Path, float | None]:
    out = settings.out / "runs" / f"{arm}-s{seed}"
    timing = out / "minutes.json"
    spec, train = ARMS[arm], settings.train
    trained = (out / "model" / "config.json").is_file()
    if not trained:
        log(f"{arm}, seed {seed}: {spec.description}")
    begun = time.monotonic()
    model = _recipe(settings, student_init, caches[spec.cache], out, spec.loss_settings(teacher, train.steps),
                    train.steps, train.lr, train.warmup_steps, train.batch_size, seed)
    if not trained:  # a run resumed from a checkpoint counts only its own part
        timing.write_text(json.dumps((time.monotonic() - begun) / 60))
    return model, json.loads(timing.read_text()) if timing.is_file() else None


def _evaluate(settings: StudySettings, record: Record, name: str, model: Path, tickets: list, log: Log,
              **extra) -> dict:
    recorded = record.score(name)
    if recorded is not None:
        return recorded
    import torch

    from distill.demo.evaluate import evaluate_model
    from distill.evaluate import load

    if settings.threads:
        torch.set_num_threads(settings.threads)
    loaded, tokenizer = load(model)
    scored = record.write(name, {**evaluate_model(loaded, tokenizer, tickets, batch_size=settings.eval_batch_size),
                                 **extra})
    log(f"{name}: exact match {scored['exact_match']:.1%} on {len(tickets)} held-out tickets")
    return scored
