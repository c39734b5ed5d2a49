"""`kdgate distill sweep`: train one student per (τ, α, k) from one base config, evaluate each on held-out demo
tickets beside the SFT baseline run the same way, and write a table and a plot.

Each run is the recipe with `loss.temperature`, `loss.alpha` and `loss.top_k` overridden and its own `out`; the
evaluation is `kdgate distill eval`'s. Runs are sequential (a CPU box has no room for two).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from distill.config import TrainConfig
from distill.recipe import run


def sweep(base: TrainConfig, out: Path, temperatures: list[float], alphas: list[float], top_ks: list[int],
          examples: int) -> list[dict]:
    from distill.demo import task
    from distill.evaluate import evaluate

    out.mkdir(parents=True, exist_ok=True)
    models = {"sft": _train(base, out / "sft", {"kind": "sft"})}
    for tau, alpha, k in itertools.product(temperatures, alphas, top_ks):
        name = f"kd tau={tau:g} alpha={alpha:g} k={k}"
        models[name] = _train(base, out / name.replace(" ", "_").replace("=", ""),
                              {"kind": "kd", "temperature": tau, "alpha": alpha, "top_k": k})
    results = evaluate(models, _teacher_dir(base), task.take("test", examples, seed=0))
    sft, teacher = results["sft"]["exact_match"], results["teacher"]["exact_match"]
    rows = []
    for name, row in results.items():
        if not name.startswith("kd"):
            continue
        tau, alpha, k = (float(part.split("=")[1]) for part in name.split()[1:])
        rows.append({"temperature": tau, "alpha": alpha, "top_k": int(k), "exact_match": row["exact_match"],
                     "kl_to_teacher": row["kl_to_teacher"], "token_agreement": row["token_agreement"],
                     "gap_recovered": (row["exact_match"] - sft) / (teacher - sft) if teacher > sft else None})
    summary = {"sft_exact_match": sft, "teacher_exact_match": teacher, "runs": rows, "steps": base.steps}
    (out / "sweep.json").write_text(json.dumps(summary, indent=1))
    (out / "sweep.md").write_text(table(summary))
    plot(summary, out / "sweep.png")
    return rows


def _train(base: TrainConfig, out: Path, loss: dict) -> Path:
    config = base.model_copy(update={"out": out, "loss": base.loss.model_copy(update=loss)})
    final = out / "model"
    return final if final.is_dir() else run(config)


def _teacher_dir(base: TrainConfig) -> Path:
    from distill.data.cache import Manifest

    teacher = Path(Manifest.load(base.cache).teacher)
    if not teacher.is_dir():
        raise ValueError(f"the cache's teacher {teacher} is not a local model folder; the sweep evaluates "
                         "against a local teacher")
    return teacher


def table(summary: dict) -> str:
    lines = [f"SFT baseline {summary['sft_exact_match']:.1%}, teacher {summary['teacher_exact_match']:.1%} "
             f"(exact match; {summary['steps']} steps each)", "",
             "| τ | α | k | exact match | gap recovered | KL to teacher | token agreement |",
             "|---|---|---|---|---|---|---|"]
    for row in summary["runs"]:
        recovered = "" if row["gap_recovered"] is None else f"{row['gap_recovered']:+.0%}"
        lines.append(f"| {row['temperature']:g} | {row['alpha']:g} | {row['top_k']} | {row['exact_match']:.1%} | "
                     f"{recovered} | {row['kl_to_teacher']:.4f} | {row['token_agreement']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for (alpha, k), group in itertools.groupby(sorted(summary["runs"], key=lambda r: (r["alpha"], r["top_k"],
                                                                                       r["temperature"])),
                                               key=lambda r: (r["alpha"], r["top_k"])):
        group = list(group)
        axis.plot([r["temperature"] for r in group], [100 * r["exact_match"] for r in group], "o-",
                  label=f"α={alpha:g}, k={k}")
    axis.axhline(100 * summary["sft_exact_match"], color="grey", linestyle="--", label="SFT baseline")
    axis.axhline(100 * summary["teacher_exact_match"], color="black", linestyle=":", label="teacher")
    axis.set_xlabel("temperature τ")
    axis.set_ylabel("whole-answer exact match (%)")
    axis.set_title(f"KD sweep on the demo task ({summary['steps']} steps each)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
