"""Build the tool-calling demo models (`kdgate demo build --tools`): the demo task with `lookup_order` (`tools.py`).

The models answer both kinds of request: a plain one (no tools: the answer JSON at once, as the plain demo models do)
and a tool conversation (offered the tool: the call first, the answer JSON after the tool's result). They start from
the committed models instead of from scratch, to stay affordable on a CPU:

1. the tokenizer is the committed one with `TOOL_CHAT_TEMPLATE` (the same vocabulary and ids);
2. the teacher is the committed teacher fine-tuned on ground truth, a mix of plain, call and answer turns;
3. the teacher answers a mix of training turns into a teacher cache (its top-k logprobs, each prompt's tools kept);
4. the student learns from that cache with the trainer's KD recipe (`demo_kd.yaml`), starting from the committed
   student (or from scratch with `student_from_scratch`);
5. both are evaluated on held-out tickets: tool-call exact match and well-formedness, the answer after the true
   tool result, and the plain answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distill.demo import ARTIFACTS_DIR, CONFIGS_DIR, DEMO_STUDENT_DIR, DEMO_TEACHER_DIR, tools
from distill.demo.build import _jsonable, _save

# The mix both models learn: calls carry the hard part (the order number among distractors); answer turns are easy
# (the tool result names the order and product) but long; plain turns keep the plain task from being forgotten.
TURN_SHARES = {"plain": 0.25, "call": 0.55, "answer": 0.2}


@dataclass(frozen=True)
class ToolBuildSettings:
    out: Path = ARTIFACTS_DIR  # the models go to out/tools/{teacher,student}
    seed: int = 0
    base_teacher: Path = DEMO_TEACHER_DIR  # fine-tuned into the tools teacher (its tokenizer is the tools models')
    base_student: Path = DEMO_STUDENT_DIR  # the student's start (its architecture, and its weights unless from scratch)
    student_from_scratch: bool = False  # re-initialise the student (seeded) instead of starting from its weights
    teacher_dir: Path | None = None  # reuse this tools teacher instead of fine-tuning one (e.g. for another student)
    teacher_steps: int = 1_500
    teacher_batch_size: int = 16  # more updates for the same compute: the teacher only learns a new format
    teacher_learning_rate: float = 5e-4
    turn_shares: dict[str, float] = field(default_factory=lambda: dict(TURN_SHARES))
    label_examples: int = 10_000  # training turns the teacher answers for the student
    top_k: int = 20
    cache: Path | None = None  # default: out/cache/tools-teacher-cache (git-ignored beside the artifacts)
    student_config: Path = CONFIGS_DIR / "demo_kd.yaml"
    student_steps: int = 1_200
    student_learning_rate: float | None = None  # default: the config's
    batch_size: int = 32  # the student's (the trainer's batch_size)
    eval_examples: int = 200  # validation tickets scored during the teacher's fine-tuning
    test_examples: int = 1_000  # held-out tickets in the final report
    threads: int | None = None

    @property
    def models(self) -> Path:
        return self.out / "tools"


def build_tools(settings: ToolBuildSettings, log: Callable[[str], None] = print) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.demo.evaluate import evaluate_tool_model
    from distill.demo.tokenizer import TOOL_CHAT_TEMPLATE

    if settings.threads:
        torch.set_num_threads(settings.threads)
    settings.models.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict = {"settings": _jsonable({key: _relative(value) if isinstance(value, Path) else value
                                           for key, value in asdict(settings).items()})}

    if settings.teacher_dir is None:
        tokenizer = AutoTokenizer.from_pretrained(str(settings.base_teacher))
        tokenizer.chat_template = TOOL_CHAT_TEMPLATE
        log(f"[1/4] teacher: {settings.base_teacher} fine-tuned {settings.teacher_steps} steps on plain, call and "
            f"answer turns ({_shares(settings.turn_shares)})")
        teacher = AutoModelForCausalLM.from_pretrained(str(settings.base_teacher))
        report["teacher_training"] = _fine_tune_teacher(teacher, tokenizer, settings, log)
        _save(teacher, tokenizer, settings.models / "teacher", report["teacher_training"])
        teacher_dir = settings.models / "teacher"
    else:
        log(f"[1/4] reusing the tools teacher in {settings.teacher_dir}")
        teacher_dir = settings.teacher_dir
        tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir))
        if tokenizer.chat_template != TOOL_CHAT_TEMPLATE:
            raise ValueError(f"{teacher_dir} is no tools teacher: its chat template is not TOOL_CHAT_TEMPLATE, so it "
                             "never saw a tool; leave --teacher out to fine-tune one, or name a tools build's teacher "
                             "(e.g. distill/demo/artifacts/tools/teacher)")
        teacher = AutoModelForCausalLM.from_pretrained(str(teacher_dir))

    cache = settings.cache or settings.out / "cache" / "tools-teacher-cache"
    log(f"[2/4] teacher cache: answers and top-{settings.top_k} logprobs for {settings.label_examples} training "
        f"turns in {cache}")
    report["teacher_cache"] = _teacher_cache(teacher_dir, cache, settings)

    start = "a fresh seeded" if settings.student_from_scratch else "the weights of"
    log(f"[3/4] student: {start} {settings.base_student}, {settings.student_steps} steps of "
        f"{settings.student_config.name}")
    report["student_training"] = _distill_student(tokenizer, cache, settings)
    student = AutoModelForCausalLM.from_pretrained(str(settings.models / "student"))

    log(f"[4/4] evaluation on {settings.test_examples} held-out tickets")
    test = tools.take("test", settings.test_examples, seed=settings.seed)
    report["test"] = {name: evaluate_tool_model(model, tokenizer, test)
                      for name, model in (("teacher", teacher), ("student", student))}
    report["build_seconds"] = round(time.monotonic() - started, 1)
    (settings.models / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _fine_tune_teacher(teacher, tokenizer, settings: ToolBuildSettings, log) -> list[dict]:
    """The teacher's SFT loop (`sft.train`) on ground-truth turns, a fresh ticket per sample."""
    from tqdm import tqdm

    from distill.demo import sft
    from distill.demo.evaluate import evaluate_tool_model

    count = settings.teacher_steps * settings.teacher_batch_size
    mix = tools.turns(tools.take("train", count, seed=settings.seed), settings.turn_shares, seed=settings.seed)
    examples = sft.encode_examples(tokenizer, [turn.messages for turn in mix], [turn.target for turn in mix],
                                   [turn.tools for turn in mix])
    validation = tools.take("val", settings.eval_examples, seed=settings.seed)

    def evaluate(step: int) -> dict:
        summary = evaluate_tool_model(teacher, tokenizer, validation)
        return {"call_exact_match": summary["call"]["exact_match"], "call_well_formed": summary["call"]["well_formed"],
                "answer_exact_match": summary["answer"]["exact_match"],
                "plain_exact_match": summary["plain"]["exact_match"]}

    steps = settings.teacher_steps
    sft_settings = sft.SftSettings(steps=steps, batch_size=settings.teacher_batch_size,
                                   learning_rate=settings.teacher_learning_rate,
                                   warmup_steps=min(100, steps // 10), seed=settings.seed, group_by_length=True)
    return sft.train(teacher, examples, sft_settings, tokenizer.pad_token_id, evaluate=evaluate,
                     eval_every=max(steps // 4, 1), log=lambda line: tqdm.write(f"  teacher {line}"),
                     progress="  teacher")


def tool_prompts(count: int, shares: dict[str, float], seed: int):
    """The first `count` training tickets as one turn each (kinds drawn by `shares`), with the ground truth as the
    reference: the tools teacher cache's prompts."""
    from distill.data.generate import Prompt

    mix = tools.turns(tools.take("train", count, seed=seed), shares, seed=seed + 1)
    prompts = [Prompt(f"tools-{index}-{turn.kind}", turn.messages, turn.target,
                      list(turn.tools) if turn.tools else None) for index, turn in enumerate(mix)]
    return f"demo-tools:train:{count}:seed{seed}:{_shares(shares)}", prompts


def _teacher_cache(teacher_dir: Path, cache: Path, settings: ToolBuildSettings) -> dict:
    """A call turn's answer is no answer JSON, so only the reference filter judges it: a kept answer is exactly the
    ground truth (the call text, or the answer JSON)."""
    from distill.data.generate import GenerateSettings
    from distill.data.make import Filters, Teacher, make_cache

    source, prompts = tool_prompts(settings.label_examples, settings.turn_shares, settings.seed)
    manifest = make_cache(cache, prompts, source, Teacher(teacher_dir, threads=settings.threads),
                          GenerateSettings(top_k=settings.top_k, seed=settings.seed, max_tokens=160),
                          Filters(json_fields=()))
    return {"dir": str(_relative(cache)), "rows": manifest.rows, "kept": manifest.kept, "dropped": manifest.dropped}


def _distill_student(tokenizer, cache: Path, settings: ToolBuildSettings) -> list[dict]:
    """`kdgate distill train --config STUDENT_CONFIG` on the cache, from the base student with the tools tokenizer;
    the trained model is copied to `out/tools/student`."""
    import shutil

    from transformers import AutoModelForCausalLM

    from distill.config import load_config
    from distill.recipe import run

    work = _relative(settings.out / "cache")  # the paths the student's saved config names
    init = work / "tools-student-init"
    _save(AutoModelForCausalLM.from_pretrained(str(settings.base_student)), tokenizer, init, [])
    overrides = [f"student.init={init}", f"student.from_scratch={str(settings.student_from_scratch).lower()}",
                 f"cache={_relative(cache)}", f"out={work / 'tools-student-run'}", f"steps={settings.student_steps}",
                 f"batch_size={settings.batch_size}", f"seed={settings.seed}",
                 f"eval_every={max(settings.student_steps // 5, 1)}",
                 f"checkpoint_every={max(settings.student_steps // 5, 1)}"]
    if settings.student_learning_rate is not None:
        overrides.append(f"optim.lr={settings.student_learning_rate}")
    if settings.threads:
        overrides.append(f"threads={settings.threads}")
    trained = run(load_config(settings.student_config, overrides))
    shutil.rmtree(settings.models / "student", ignore_errors=True)
    shutil.copytree(trained, settings.models / "student")
    return json.loads((trained / "training_log.json").read_text())


def _relative(path: Path) -> Path:
    """`path` relative to the working directory when it is inside it: the committed report and config then name
    repository paths, not the machine's."""
    try:
        return Path(path).resolve().relative_to(Path.cwd())
    except ValueError:
        return Path(path)


def _shares(shares: dict[str, float]) -> str:
    return ", ".join(f"{kind} {share:g}" for kind, share in shares.items())
