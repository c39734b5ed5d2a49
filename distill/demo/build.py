"""Build the demo models: tokenizer, teacher (from scratch, on ground truth), student (on the teacher's answers).

Every step is seeded, so a build on the same machine kind reproduces the committed models. The student is
trained on teacher outputs (hard-label SFT for now; the distillation trainer replaces this with KD losses), so
its gap to the teacher is the gap routing and distillation have to recover.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distill.demo import ARTIFACTS_DIR, models, sft, task
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
        report["teacher_training"] = _train(teacher, tokenizer, task.take("train", count, seed=settings.seed), None,
                                            settings, settings.teacher_steps, "teacher", log)
        _save(teacher, tokenizer, settings.out / "teacher", report["teacher_training"])
    else:
        log(f"[1-2/5] reusing the teacher in {settings.teacher_dir}")
        tokenizer = AutoTokenizer.from_pretrained(str(settings.teacher_dir))
        teacher = AutoModelForCausalLM.from_pretrained(str(settings.teacher_dir))

    log(f"[3/5] teacher labels: greedy answers to {settings.label_examples} training tickets")
    label_tickets = task.take("train", settings.label_examples, seed=settings.seed + 2)
    # Cached beside the teacher, so a later student-only build on the same teacher reuses the answers.
    teacher_home = (settings.teacher_dir or settings.out / "teacher").parent
    labels = _teacher_labels(teacher, tokenizer, label_tickets, teacher_home / "cache" / "teacher_labels.jsonl")
    report["teacher_label_accuracy"] = sum(
        label == t.answer_json() for label, t in zip(labels, label_tickets, strict=True)) / len(labels)

    log(f"[4/5] student: {settings.student}, {settings.student_steps} steps on the teacher's answers")
    student = models.build_model(settings.student, tokenizer, seed=settings.seed + 3)
    report["student_training"] = _train(student, tokenizer, label_tickets, labels, settings, settings.student_steps,
                                        "student", log)
    _save(student, tokenizer, settings.out / "student", report["student_training"])

    log(f"[5/5] evaluation on {settings.test_examples} held-out tickets")
    test = task.take("test", settings.test_examples, seed=settings.seed)
    report["test"] = {name: evaluate_model(model, tokenizer, test)
                      for name, model in (("teacher", teacher), ("student", student))}
    report["parameters"] = {name: sum(p.numel() for p in model.parameters())
                            for name, model in (("teacher", teacher), ("student", student))}
    report["build_seconds"] = round(time.monotonic() - started, 1)
    (settings.out / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _train(model, tokenizer, tickets, answers, settings: BuildSettings, steps: int, name: str, log) -> list[dict]:
    from tqdm import tqdm  # evaluation lines are written above the progress bar, not through it
    answers = answers if answers is not None else [t.answer_json() for t in tickets]
    examples = sft.encode_examples(tokenizer, [t.messages() for t in tickets], answers)
    validation = task.take("val", settings.eval_examples, seed=settings.seed)
    eval_every = max(steps // 10, 1)

    def evaluate(step: int) -> dict:
        summary = evaluate_model(model, tokenizer, validation)
        return {key: summary[key] for key in ("exact_match", "queue_accuracy", "priority_accuracy", "reply_accuracy")}

    sft_settings = sft.SftSettings(steps=steps, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                                   warmup_steps=min(200, steps // 10), seed=settings.seed)
    return sft.train(model, examples, sft_settings, tokenizer.pad_token_id, evaluate=evaluate, eval_every=eval_every,
                     log=lambda line: tqdm.write(f"  {name} {line}"), progress=f"  {name}")


def _teacher_labels(teacher, tokenizer, tickets, cache: Path) -> list[str]:
    """Greedy teacher answers, cached next to the models and keyed by the teacher's weights and the tickets."""
    from distill.demo.generation import greedy_answers

    key = _fingerprint(teacher, tickets)
    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.is_file():
        cached = json.loads(cache.read_text().splitlines()[0])
        if cached.get("key") == key:
            return [json.loads(line)["answer"] for line in cache.read_text().splitlines()[1:]]
    answers = greedy_answers(teacher, tokenizer, [t.messages() for t in tickets], batch_size=64, progress="labels")
    lines = [json.dumps({"key": key})] + [json.dumps({"answer": answer}) for answer in answers]
    cache.write_text("\n".join(lines) + "\n")
    return answers


def _fingerprint(model, tickets) -> str:
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.float().numpy().tobytes()[:4096])
    for ticket in tickets[:100]:
        digest.update(ticket.text.encode())
    digest.update(str(len(tickets)).encode())
    return digest.hexdigest()[:16]


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
