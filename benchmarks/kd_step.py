"""The KD training step: offline cached top-k (this project) against an online teacher with TRL's GKD loss.

    .venv/bin/python benchmarks/kd_step.py --cache runs/teacher-cache [--steps 150] [--rounds 2] [--threads 1]

Both paths fine-tune the same student (the committed demo student) on the same teacher-cache rows, with the same
objective, forward KL(teacher‖student) at τ=1 (TRL's `generalized_jsd_loss` with β=0), the same batch, optimizer and
steps:
- offline: the teacher's cached top-k logprobs (+ tail bucket), `distill.losses.ChunkedKD`;
- online: the teacher model runs forward on every batch, full-vocabulary loss by TRL's GKD (`trl.experimental.gkd`).
Each run is its own process (so its peak RSS is its own), runs alternate offline/online for `--rounds`, and the table
shows medians: answer tokens/s, peak RSS, and the held-out teacher-forced top-1 agreement after the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(args: argparse.Namespace) -> None:
    import torch

    from distill.config import load_config
    from distill.demo import DEMO_STUDENT_DIR, DEMO_TEACHER_DIR
    from distill.losses import IGNORE_INDEX
    from distill.recipe import Recipe, collate

    torch.set_num_threads(args.threads)
    config = load_config(None, [f"student.init={DEMO_STUDENT_DIR}", f"cache={args.cache}",
                                "out=/tmp/kd-step-bench", "loss.temperature=1.0", "loss.alpha=1.0",
                                f"batch_size={args.batch_size}", "optim.warmup_steps=0", "optim.lr=3e-4",
                                f"steps={args.steps}", f"threads={args.threads}", "eval_fraction=0.02"])
    recipe = Recipe(config)
    recipe.setup()
    teacher = None
    if args.path == "online":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from transformers import AutoModelForCausalLM
        from trl.experimental.gkd import GKDTrainer

        teacher = AutoModelForCausalLM.from_pretrained(DEMO_TEACHER_DIR, dtype=torch.float32).eval()
    rows = recipe.train_rows
    tokens, started = 0, time.perf_counter()
    for step in range(args.steps):
        batch = collate([rows[(step * args.batch_size + i) % len(rows)] for i in range(args.batch_size)],
                        recipe.tokenizer.pad_token_id)
        recipe.model.train()
        if teacher is None:
            loss = recipe._losses(batch)["loss"]
        else:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            student_logits = recipe.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            loss = GKDTrainer.generalized_jsd_loss(student_logits[:, :-1], teacher_logits[:, :-1], labels=labels,
                                                   beta=0.0, temperature=1.0)
        loss.backward()
        recipe.optimizer.step()
        recipe.optimizer.zero_grad(set_to_none=True)
        tokens += int((batch["labels"] != IGNORE_INDEX).sum())
    seconds = time.perf_counter() - started
    result = {"tokens_per_s": tokens / seconds, "agreement": recipe.evaluate()["teacher_agreement"],
              "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(result))


def parent(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    results: dict[str, list[dict]] = {"offline": [], "online": []}
    for _ in range(args.rounds):
        for path in ("offline", "online"):
            done = subprocess.run([sys.executable, __file__, "--child", path, "--cache", str(args.cache),
                                   "--steps", str(args.steps), "--threads", str(args.threads),
                                   "--batch-size", str(args.batch_size)],
                                  capture_output=True, text=True, check=True)
            results[path].append(json.loads(done.stdout.strip().splitlines()[-1]))
    table = Table(title=f"KD step, demo student ← demo teacher, batch {args.batch_size}, {args.steps} steps, "
                        f"{args.threads} thread(s), median of {args.rounds} alternating runs")
    for column in ("path", "answer tokens/s", "peak RSS (MB)", "held-out top-1 agreement after the steps"):
        table.add_column(column, justify="right")
    medians = {path: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for path, runs in results.items()}
    names = {"offline": "offline cached top-k (kdgate)", "online": "online teacher, TRL GKD loss"}
    for path, values in medians.items():
        table.add_row(names[path], f"{values['tokens_per_s']:,.0f}", f"{values['max_rss_mb']:,.0f}",
                      f"{values['agreement']:.4f}")
    table.add_row("offline ÷ online", f"{medians['offline']['tokens_per_s'] / medians['online']['tokens_per_s']:.2f}×",
                  f"{medians['offline']['max_rss_mb'] / medians['online']['max_rss_mb']:.2f}×", "")
    Console(width=140).print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "teacher-cache")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--child", choices=("offline", "online"), dest="path")
    arguments = parser.parse_args()
    child(arguments) if arguments.path else parent(arguments)
