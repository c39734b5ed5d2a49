"""Build the demo models: tokenizer, teacher (from scratch, on ground truth), student (distilled from the teacher).

Every step is seeded, so a build on the same machine kind reproduces the committed models. The student is made
the way the README's distillation section makes one: the teacher's answers with their top-k logprobs go to a
teacher cache (`kdgate distill generate --demo N`), and the trainer distills them into a fresh student
(`kdgate distill train --config distill/configs/demo_kd.yaml`; `demo_sft.yaml` gives the hard-label baseline).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distill.demo import ARTIFACTS_DIR, CONFIGS_DIR, models, sft, task
from distill.demo.evaluate import evaluate_model


@dataclass(frozen=True)
class BuildSettings:
    out: Path = ARTIFACTS_DIR
    seed: int = 0
    vocab_size: int = 1024
    tokenizer_corpus: int = 20_000  # tickets the tokenizer is trained on
    teacher_steps: int = 5_000
    teacher_examples: int | None = None  # ground-truth tickets for the teacher; default: a fresh one per sample
    label_examples: int = 30_000  # training tickets the teacher answers for the student
    top_k: int = 20  # teacher logprobs cached per answer token
    cache: Path | None = None  # the teacher cache (reused or resumed); default: cache/teacher-cache by the teacher
    student_config: Path = CONFIGS_DIR / "demo_kd.yaml"  # the trainer's recipe for the student
    student_steps: int = 4_000
    batch_size: int = 32
    learning_rate: float = 1e-3
    eval_examples: int = 300  # validation tickets scored during training
    test_examples: int = 1_000  # held-out tickets in the final report
    threads: int | None = None
    teacher_dir: Path | None = None  # reuse this teacher instead of training one (e.g. for a longer student run)
    teacher: models.DemoArchitecture = field(default_factory=lambda: models.TEACHER)
    student: models.DemoArchitecture = field(default_factory=lambda: models.STUDENT)


def build(settings: BuildSettings, log: Callable[[str], None] = print) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.demo.tokenizer import train_tokenizer

    if settings.threads:
        torch.set_num_threads(settings.threads)
    settings.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict = {"settings": _jsonable(asdict(settings))}

    if settings.teacher_dir is None:
        log(f"[1/5] tokenizer: byte-level BPE, {settings.vocab_size} tokens, on {settings.tokenizer_corpus} tickets")
        corpus = task.take("train", settings.tokenizer_corpus, seed=settings.seed + 1)
        tokenizer = train_tokenizer([t.text for t in corpus] + [t.answer_json() for t in corpus], settings.vocab_size)
        log(f"[2/5] teacher: {settings.teacher}, {settings.teacher_steps} steps on ground truth")
        teacher = models.build_model(settings.teacher, tokenizer, seed=settings.seed)
        count = settings.teacher_examples or settings.teacher_steps * settings.batch_size
        report["teacher_training"] = _train(teacher, tokenizer, task.take("train", count, seed=settings.seed),
                                            settings, settings.teacher_steps, "teacher", log)
        _save(teacher, tokenizer, settings.out / "teacher", report["teacher_training"])
    else:
        log(f"[1-2/5] reusing the teacher in {settings.teacher_dir}")
        tokenizer = AutoTokenizer.from_pretrained(str(settings.teacher_dir))
        teacher = AutoModelForCausalLM.from_pretrained(str(settings.teacher_dir))

    teacher_dir = settings.teacher_dir or settings.out / "teacher"
    cache = settings.cache or teacher_dir.parent / "cache" / "teacher-cache"
    log(f"[3/5] teacher cache: answers and top-{settings.top_k} logprobs for {settings.label_examples} training "
        f"tickets in {cache}")
    report["teacher_cache"] = _teacher_cache(teacher_dir, cache, settings)

    log(f"[4/5] student: {settings.student}, {settings.student_steps} steps of {settings.student_config.name}")
    report["student_training"] = _distill_student(tokenizer, cache, settings)
    student = AutoModelForCausalLM.from_pretrained(str(settings.out / "student"))

    log(f"[5/5] evaluation on {settings.test_examples} held-out tickets")
    test = task.take("test", settings.test_examples, seed=settings.seed)
    report["test"] = {name: evaluate_model(model, tokenizer, test)
                      for name, model in (("teacher", teacher), ("student", student))}
    report["parameters"] = {name: sum(p.numel() for p in model.parameters())
                            for name, model in (("teacher", teacher), ("student", student))}
    report["build_seconds"] = round(time.monotonic() - started, 1)
    (settings.out / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _train(model, tokenizer, tickets, settings: BuildSettings, steps: int, name: str, log) -> list[dict]:
    from tqdm import tqdm  # evaluation lines are written above the progress bar, not through it
    examples = sft.encode_examples(tokenizer, [t.messages() for t in tickets], [t.answer_json() for t in tickets])
    validation = task.take("val", settings.eval_examples, seed=settings.seed)
    eval_every = max(steps // 10, 1)

    def evaluate(step: int) -> dict:
        summary = evaluate_model(model, tokenizer, validation)
        return {key: summary[key] for key in ("exact_match", "queue_accuracy", "priority_accuracy", "reply_accuracy")}

    sft_settings = sft.SftSettings(steps=steps, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                                   warmup_steps=min(200, steps // 10), seed=settings.seed)
    return sft.train(model, examples, sft_settings, tokenizer.pad_token_id, evaluate=evaluate, eval_every=eval_every,
                     log=lambda line: tqdm.write(f"  {name} {line}"), progress=f"  {name}")


def _teacher_cache(teacher_dir: Path, cache: Path, settings: BuildSettings) -> dict:
    """What `kdgate distill generate --demo N --top-k K --seed S` writes (the same call), resumed or reused."""
    from distill.data.generate import GenerateSettings
    from distill.data.make import Filters, Teacher, make_cache
    from distill.demo.prompts import DEMO_FIELDS, demo_prompts

    source, prompts = demo_prompts(settings.label_examples, settings.seed)
    manifest = make_cache(cache, prompts, source, Teacher(teacher_dir, threads=settings.threads),
                          GenerateSettings(top_k=settings.top_k, seed=settings.seed), Filters(DEMO_FIELDS))
    return {"dir": str(cache), "rows": manifest.rows, "kept": manifest.kept, "dropped": manifest.dropped}


def _distill_student(tokenizer, cache: Path, settings: BuildSettings) -> list[dict]:
    """`kdgate distill train --config STUDENT_CONFIG` on the cache, from a fresh seeded student of the demo's
    architecture; the trained model is copied to `out/student`."""
    import shutil

    from distill.config import load_config
    from distill.recipe import run

    work = settings.out / "cache"  # git-ignored beside the committed artifacts
    init = work / "student-init"  # the architecture and tokenizer the recipe starts from (weights re-initialised)
    _save(models.build_model(settings.student, tokenizer, seed=settings.seed), tokenizer, init, [])
    overrides = [f"student.init={init}", "student.from_scratch=true", f"cache={cache}", f"out={work / 'student-run'}",
                 f"steps={settings.student_steps}", f"batch_size={settings.batch_size}", f"seed={settings.seed}"]
    if settings.threads:
        overrides.append(f"threads={settings.threads}")
    trained = run(load_config(settings.student_config, overrides))
    shutil.rmtree(settings.out / "student", ignore_errors=True)
    shutil.copytree(trained, settings.out / "student")
    return json.loads((trained / "training_log.json").read_text())


def _save(model, tokenizer, directory: Path, history: list[dict]) -> None:
    """The model, its tokenizer, and its validation curve (`training_log.json`) in one Hugging Face directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "training_log.json").write_text(json.dumps(history, indent=1) + "\n")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return str(value) if isinstance(value, Path) else value
