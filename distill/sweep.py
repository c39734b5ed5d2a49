"""`kdgate distill sweep`: train one student per (estimator, τ, α, k) from one base config, evaluate each on
held-out demo tickets beside the SFT baseline run the same way, and write a table and a plot.

Each run is the recipe with `loss.estimator`, `loss.temperature`, `loss.alpha` and `loss.top_k` (or, sampled,
`loss.draws`) overridden and its own `out`; a finished run is reused. The evaluation is `kdgate distill eval`'s.
Runs are sequential (a CPU box has no room for two).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from distill.config import TrainConfig
from distill.recipe import run


def sweep(base: TrainConfig, out: Path, temperatures: list[float], alphas: list[float], top_ks: list[int],
          examples: int, estimators: tuple[str, ...] = ("topk",)) -> list[dict]:
    """k is the cached alternatives per token for `topk`, the draws per token for `sampled`."""
    from distill.demo import task
    from distill.evaluate import evaluate

    out.mkdir(parents=True, exist_ok=True)
    models = {"sft": _train(base, out / "sft", {"kind": "sft"})}
    specs = {}
    for estimator, tau, alpha, k in itertools.product(estimators, temperatures, alphas, top_ks):
        spec = {"estimator": estimator, "temperature": tau, "alpha": alpha, "top_k": k}
        name = f"{estimator} tau={tau:g} alpha={alpha:g} k={k}"
        loss = {"kind": "kd", "estimator": estimator, "temperature": tau, "alpha": alpha}
        loss.update({"top_k": k} if estimator == "topk" else {"draws": k})
        specs[name] = spec
        models[name] = _train(base, out / name.replace(" ", "_").replace("=", ""), loss)
    results = evaluate(models, _teacher_dir(base), task.take("test", examples, seed=0))
    sft, teacher = results["sft"]["exact_match"], results["teacher"]["exact_match"]
    rows = [{**spec, "exact_match": results[name]["exact_match"], "kl_to_teacher": results[name]["kl_to_teacher"],
             "token_agreement": results[name]["token_agreement"],
             "gap_recovered": (results[name]["exact_match"] - sft) / (teacher - sft) if teacher > sft else None}
            for name, spec in specs.items()]
    summary = {"sft_exact_match": sft, "teacher_exact_match": teacher, "runs": rows, "steps": base.steps,
               "examples": examples}
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
             f"(exact match on {summary['examples']} held-out tickets; {summary['steps']} steps each; k is the "
             "cached top-k, or the draws per token when sampled)", "",
             "| estimator | τ | α | k | exact match | gap recovered | KL to teacher | token agreement |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary["runs"]:
        recovered = "" if row["gap_recovered"] is None else f"{row['gap_recovered']:+.0%}"
        lines.append(f"| {row['estimator']} | {row['temperature']:g} | {row['alpha']:g} | {row['top_k']} | "
                     f"{row['exact_match']:.1%} | {recovered} | {row['kl_to_teacher']:.4f} | "
                     f"{row['token_agreement']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    def line(run: dict) -> tuple:
        return run["estimator"], run["alpha"], run["top_k"]

    for (estimator, alpha, k), group in itertools.groupby(sorted(summary["runs"], key=lambda r: (*line(r),
                                                                                                  r["temperature"])),
                                                          key=line):
        group = list(group)
        axis.plot([r["temperature"] for r in group], [100 * r["exact_match"] for r in group],
                  "o-" if estimator == "topk" else "s--", label=f"{estimator} α={alpha:g}, k={k}")
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
