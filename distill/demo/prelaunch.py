"""The drift scenario's pre-launch student for any teacher (`kdgate demo prelaunch-student`): distilled from the
teacher without a ticket that mentions a launched product, so that `kdgate demo drift` has a shift to close.

Made as the demo's own (`distill/demo/artifacts/student-prelaunch`) was, with the project's commands' own code:

    kdgate demo prelaunch-prompts --count 12000 --out WORK/prelaunch-prompts.jsonl
    kdgate distill generate --prompts WORK/prelaunch-prompts.jsonl --teacher-dir TEACHER --top-k 20 --out WORK/cache
    kdgate distill train --config distill/configs/demo_kd.yaml student.init=INIT cache=WORK/cache out=WORK/run

and WORK/run/model copied to OUT. The demo's started from a fresh seeded student of the demo student's architecture
(`from_scratch`, 3,000 steps); a pruned or pretrained student (SmolLM2's) starts from its own weights.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distill.demo import CONFIGS_DIR


@dataclass(frozen=True)
class PrelaunchSettings:
    teacher: Path  # the teacher's model folder: it answers the pre-launch tickets
    init: Path  # the student's start: its architecture and tokenizer (the teacher's), and its weights
    out: Path  # the pre-launch student's model folder
    prompts: int = 12_000  # pre-launch training tickets the teacher answers (the demo's count)
    steps: int = 3_000  # the recipe's optimizer steps (the demo's)
    from_scratch: bool = False  # re-initialise `init`'s weights (seeded), as the demo's was; False: train from them
    config: Path = CONFIGS_DIR / "demo_kd.yaml"  # the recipe's YAML (the demo student's)
    overrides: tuple[str, ...] = ()  # `key=value` overrides of it, after this command's own
    top_k: int = 20  # the teacher's logprobs cached per token
    seed: int = 0  # of the tickets, the teacher cache and the recipe
    threads: int | None = None  # torch CPU threads of the teacher and the recipe
    work: Path | None = None  # the prompts, the teacher cache and the recipe's run (resumed); default: OUT-work

    @property
    def work_dir(self) -> Path:
        return self.work or self.out.with_name(f"{self.out.name}-work")


def build_prelaunch_student(settings: PrelaunchSettings, log: Callable[[str], None] = print) -> dict:
    """The teacher's top-k on pre-launch tickets, the KD recipe from `init` on them, the model in `out`; a rerun
    resumes the cache and the run. ValueError: a tokenizer other than the teacher's, a bad override, a cache or a
    checkpoint of other settings."""
    from distill.config import load_config
    from distill.data.generate import GenerateSettings, load_prompts
    from distill.data.make import Filters, Teacher, make_cache
    from distill.demo.prompts import write_prelaunch_prompts
    from distill.recipe import run
    from runtime.tokenizer_hash import tokenizer_hash

    if tokenizer_hash(settings.init) != tokenizer_hash(settings.teacher):  # refused now, not after the cache
        raise ValueError(f"the student init {settings.init} has another tokenizer than the teacher "
                         f"{settings.teacher}; the teacher's top-k would name other tokens")
    work = settings.work_dir
    cache, trained = work / "cache", work / "run"
    config = load_config(settings.config, [
        f"student.init={settings.init}", f"student.from_scratch={str(settings.from_scratch).lower()}",
        f"cache={cache}", f"out={trained}", f"steps={settings.steps}", f"seed={settings.seed}",
        *([f"threads={settings.threads}"] if settings.threads else []), *settings.overrides])  # checked before work

    prompts = write_prelaunch_prompts(work / "prelaunch-prompts.jsonl", settings.prompts, settings.seed)
    log(f"[1/2] teacher cache: {settings.teacher} answers {settings.prompts} pre-launch tickets, top-{settings.top_k} "
        f"logprobs kept, in {cache}")
    manifest = make_cache(cache, load_prompts(prompts), str(prompts),
                          Teacher(settings.teacher, threads=settings.threads),
                          GenerateSettings(top_k=settings.top_k, seed=settings.seed), Filters())
    start = "a fresh seeded start of its architecture" if settings.from_scratch else "its weights"
    log(f"[2/2] student: {settings.steps} steps of {settings.config.name} from {settings.init} ({start}), on "
        f"{manifest.kept} kept answers")
    model = run(config)
    shutil.rmtree(settings.out, ignore_errors=True)
    shutil.copytree(model, settings.out)
    return {"out": str(settings.out), "cache": {"dir": str(cache), "rows": manifest.rows, "kept": manifest.kept,
                                                "dropped": manifest.dropped},
            "training": json.loads((model / "training_log.json").read_text())}
