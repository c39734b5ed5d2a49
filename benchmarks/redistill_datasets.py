"""Which live records to re-distil from: on-policy only, off-policy only, or the mix — the same records, the same
recipe and steps, the same replay of the original data, the same held-out slice and golden set; and the mix
trained as a LoRA adapter (what a vLLM student's runtime LoRA would load) against the full fine-tune.

Reads the store of a `kdgate demo drift` run (the records the pre-launch student's traffic left) and trains one
candidate per choice from the pre-launch student:

    .venv/bin/kdgate demo drift --out runs/drift
    .venv/bin/python benchmarks/redistill_datasets.py --run runs/drift --out runs/redistill-datasets
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distill.config import load_config
from distill.online.dataset import build, write_cache
from distill.online.evaluate import heldout_figures
from distill.online.settings import TrainerSettings
from kdgate.drift.report import offline
from runtime.demo import DEMO_PRELAUNCH_STUDENT_DIR as PRELAUNCH_STUDENT
from runtime.store.records import ShadowStore

CHOICES = {"on-policy only": (1.0, []), "off-policy only": (0.0, []), "the mix (default)": (None, []),
           "the mix, LoRA r=64": (None, ["lora.enabled=true", "lora.r=64", "lora.alpha=128"])}


def records_of(run: Path, version: str) -> list:
    """The records served by `version` (what a job started while it was active reads)."""
    store = ShadowStore(f"sqlite:///{(run / 'stack' / 'store.sqlite3').resolve()}")
    try:
        return [record for record in store.iter_records() if record.student_version == version]
    finally:
        store.close()


def train(records: list, on_share: float, folder: Path, steps: int, replay: Path | None, threads: int,
          extra: list[str]):
    from distill.recipe import run

    settings = TrainerSettings().dataset
    dataset = build(records, "initial", on_share, settings.holdout_share, None, replay_cache=replay,
                    replay_share=settings.replay_share if replay else 0.0)
    write_cache(folder / "train", dataset.train, "demo-teacher", PRELAUNCH_STUDENT, "drift run records")
    config = load_config(TrainerSettings().train.config, [f"student.init={PRELAUNCH_STUDENT}",
                                                          f"cache={folder / 'train'}", f"out={folder / 'out'}",
                                                          f"steps={steps}", f"threads={threads}", *extra])
    return run(config), dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/drift"), help="a `kdgate demo drift` --out folder")
    parser.add_argument("--out", type=Path, default=Path("runs/redistill-datasets"))
    parser.add_argument("--steps", type=int, default=800, help="as the drift run's job")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    records = records_of(args.run, "initial")
    replay = args.run / "replay-cache"
    replay = replay if (replay / "manifest.json").is_file() else None
    from distill.evaluate import load

    rows, models = {}, {"pre-launch student": PRELAUNCH_STUDENT}
    for number, (name, (share, extra)) in enumerate(CHOICES.items()):
        on_share = TrainerSettings().dataset.on_policy_share if share is None else share
        model_dir, dataset = train(records, on_share, args.out / f"choice-{number}", args.steps, replay, args.threads,
                                   extra)
        model, tokenizer = load(model_dir)
        rows[name] = {"on_policy_share": on_share, "dataset": dataset.figures,
                      "heldout": heldout_figures(model, tokenizer, dataset.heldout, 64)}
        models[name] = model_dir
    model, tokenizer = load(PRELAUNCH_STUDENT)
    rows["pre-launch student"] = {"heldout": heldout_figures(model, tokenizer, dataset.heldout, 64)}
    measured = offline(models, TrainerSettings().golden.path)
    print(f"{len(records)} records served by the pre-launch student; held out: the newest {len(dataset.heldout)}; "
          f"replay: {'yes' if replay else 'no'}; {args.steps} steps each\n")
    print("| training data | examples (on-policy) | held-out KL | token agreement | launched tickets | golden | "
          "golden slices, lowest |")
    print("|---|---|---|---|---|---|---|")
    for name in ["pre-launch student", *CHOICES]:
        figures, held = measured[name], rows[name]["heldout"]
        data = rows[name].get("dataset")
        size = f"{data['train']} ({data['train_on_policy']})" if data else "—"
        lowest = min(figures["golden"]["by_slice"].items(), key=lambda item: item[1])
        print(f"| {name} | {size} | {held['kl_to_teacher']:.3f} | {held['token_agreement']:.1%} | "
              f"{figures['launched']:.1%} | {figures['golden']['exact_match']:.1%} | "
              f"{lowest[0]} {lowest[1]:.1%} |")
    (args.out / "datasets.json").write_text(json.dumps({"rows": rows, "offline": measured}, indent=1, default=str))


if __name__ == "__main__":
    main()
