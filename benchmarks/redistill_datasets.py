"""Which live records to re-distil from: on-policy only, off-policy only, or the mix — the same records, the same
recipe and steps, the same replay of the original data, the same held-out slice and golden set; and the mix
trained as a LoRA adapter (what a vLLM student's runtime LoRA would load) against the full fine-tune.

Reads the store of a `kdgate demo drift` run (the records the pre-launch student's traffic left) and its drift.json
(the pair, the replay cache, the job's recipe overrides and steps), and trains one candidate per choice from the
pre-launch student as that run's job did:

    .venv/bin/kdgate demo drift --out runs/drift
    .venv/bin/python benchmarks/redistill_datasets.py --run runs/drift --out runs/redistill-datasets
    .venv/bin/python benchmarks/redistill_datasets.py --run runs/drift-smollm2 --choices mix,off-policy
"""

from __future__ import annotations

import argparse
import ast
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from distill.config import load_config
from distill.data.make import Teacher
from distill.online.dataset import Dataset, build, check_replay_tokenizer, write_cache
from distill.online.evaluate import heldout_figures
from distill.online.settings import TrainerSettings
from kdgate.drift.report import offline
from kdgate.drift.run import DriftSettings
from runtime.store.records import ShadowStore


@dataclass(frozen=True)
class Choice:
    label: str  # the table's row
    on_policy_share: float | None  # None: the trainer's default (`dataset.on_policy_share`)
    overrides: tuple[str, ...] = ()  # the recipe's, after the job's own

    def share(self) -> float:
        return TrainerSettings().dataset.on_policy_share if self.on_policy_share is None else self.on_policy_share


CHOICES = {"on-policy": Choice("on-policy only", 1.0), "off-policy": Choice("off-policy only", 0.0),
           "mix": Choice("the mix (default)", None),
           "mix-lora": Choice("the mix, LoRA r=64", None, ("lora.enabled=true", "lora.r=64", "lora.alpha=128"))}


@dataclass(frozen=True)
class Pair:
    """What a drift run's job trained with, so that every candidate here trains as it did."""

    teacher: Path
    student: Path  # the pre-launch student: every candidate starts from it; its tokenizer is the cache's
    replay: Path | None  # the original distillation data the job rehearsed beside the records
    overrides: tuple[str, ...]  # the job's recipe overrides, after `steps=` and before a choice's own
    steps: int


def read_pair(run: Path) -> Pair:
    """The pair, replay cache, overrides and steps of the run in `run` (its drift.json), refused when its replay
    cache is in another tokenizer than the student's: its ids would be trained on as the student's own."""
    report = run / "drift.json"
    pair = pair_of(run) if report.is_file() else demo_pair(run)
    if pair.replay is not None:
        try:
            check_replay_tokenizer(pair.replay, pair.student)
        except ValueError as error:
            raise SystemExit(str(error)) from None
    return pair


def pair_of(run: Path) -> Pair:
    """From drift.json's `settings`, every DriftSettings field as its str()."""
    report = run / "drift.json"
    settings = json.loads(report.read_text())["settings"]
    given = None if settings["replay_from"] == "None" else Path(settings["replay_from"])
    return Pair(existing(report, "teacher", settings["teacher"]),
                existing(report, "pre-launch student", settings["student"]), given or made_replay(run),
                tuple(ast.literal_eval(settings["train_overrides"])), int(settings["train_steps"]))


def demo_pair(run: Path) -> Pair:
    """A run made before drift.json was written: it ran the demo pair with `kdgate demo drift`'s defaults."""
    demo = DriftSettings()
    print(f"{run / 'drift.json'} not found (a run from before it was written): the demo pair, {demo.train_steps} "
          "steps, no recipe overrides")
    return Pair(demo.teacher, demo.student, made_replay(run), demo.train_overrides, demo.train_steps)


def existing(report: Path, role: str, folder: str) -> Path:
    """`folder`, as drift.json names it, refused when it is gone: no candidate could train as the run's job did."""
    path = Path(folder)
    if not path.is_dir():
        relative = "" if path.is_absolute() else " here (a relative path: run this from where the drift run ran)"
        raise SystemExit(f"{report} names the {role} {folder}, which no longer exists{relative}: restore it, or run "
                         "`kdgate demo drift` again")
    return path


def made_replay(run: Path) -> Path | None:
    """The replay cache a run made itself when it was given none (`--replay-cache`)."""
    made = run / "replay-cache"
    return made if (made / "manifest.json").is_file() else None


def chosen(names: str) -> list[str]:
    """`--choices`: comma-separated names of CHOICES, refused when one is unknown."""
    picked = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in picked if name not in CHOICES]
    if unknown or not picked:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or 'nothing'} is not a choice; give some of "
                                         f"{', '.join(CHOICES)}")
    return picked


def records_of(run: Path, version: str) -> list:
    """The records served by `version` (what a job started while it was active reads)."""
    store = ShadowStore(f"sqlite:///{(run / 'stack' / 'store.sqlite3').resolve()}")
    try:
        return [record for record in store.iter_records() if record.student_version == version]
    finally:
        store.close()


def train(records: list, choice: Choice, folder: Path, pair: Pair, steps: int, threads: int):
    """One candidate from the pre-launch student, with the job's dataset (distill/online/job.py) and `recipe`."""
    from distill.recipe import run

    settings = TrainerSettings().dataset
    dataset = build(records, "initial", choice.share(), settings.holdout_share, None, replay_cache=pair.replay,
                    replay_share=settings.replay_share if pair.replay else 0.0)
    write_cache(folder / "train", dataset.train, Teacher(pair.teacher).name, pair.student, "drift run records")
    return run(recipe(folder, pair, steps, threads, choice)), dataset


def recipe(folder: Path, pair: Pair, steps: int, threads: int, choice: Choice):
    """The job's recipe with its overrides in its order: its own paths, then the run's `steps=` and overrides (the
    trainer's `train.overrides`), then the choice's, then the threads."""
    return load_config(TrainerSettings().train.config, [f"student.init={pair.student}", f"cache={folder / 'train'}",
                                                        f"out={folder / 'out'}", f"steps={steps}", *pair.overrides,
                                                        *choice.overrides, f"threads={threads}"])


def measure(records: list, pair: Pair, names: list[str], out: Path, steps: int, threads: int
            ) -> tuple[dict, dict, Dataset]:
    """The chosen candidates, trained and judged on the held-out slice, and the pre-launch student on the same:
    (rows, model folders by row, the last dataset)."""
    from distill.evaluate import load

    rows, models = {}, {"pre-launch student": pair.student}
    for name in names:
        choice = CHOICES[name]
        model_dir, dataset = train(records, choice, out / f"choice-{name}", pair, steps, threads)
        model, tokenizer = load(model_dir)
        rows[choice.label] = {"on_policy_share": choice.share(), "dataset": dataset.figures,
                              "heldout": heldout_figures(model, tokenizer, dataset.heldout, 64)}
        models[choice.label] = model_dir
    model, tokenizer = load(pair.student)
    rows["pre-launch student"] = {"heldout": heldout_figures(model, tokenizer, dataset.heldout, 64)}
    return rows, models, dataset


def print_table(records: list, pair: Pair, steps: int, dataset: Dataset, rows: dict, measured: dict) -> None:
    """The table, a row per model in `measured`'s order, under a line saying what it measured."""
    print(f"{len(records)} records served by the pre-launch student; held out: the newest {len(dataset.heldout)}; "
          f"replay: {pair.replay or 'none'}; {steps} steps each; teacher {pair.teacher}, pre-launch student "
          f"{pair.student}; recipe overrides: {' '.join(pair.overrides) or 'none'}\n")
    print("| training data | examples (on-policy) | held-out KL | token agreement | launched tickets | golden | "
          "golden slices, lowest |")
    print("|---|---|---|---|---|---|---|")
    for name, figures in measured.items():
        held, data = rows[name]["heldout"], rows[name].get("dataset")
        size = f"{data['train']} ({data['train_on_policy']})" if data else "—"
        lowest = min(figures["golden"]["by_slice"].items(), key=lambda item: item[1])
        print(f"| {name} | {size} | {held['kl_to_teacher']:.3f} | {held['token_agreement']:.1%} | "
              f"{figures['launched']:.1%} | {figures['golden']['exact_match']:.1%} | "
              f"{lowest[0]} {lowest[1]:.1%} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/drift"), help="a `kdgate demo drift` --out folder")
    parser.add_argument("--out", type=Path, default=Path("runs/redistill-datasets"))
    parser.add_argument("--steps", type=int, default=None, help="default: the drift run's job's (its --train-steps)")
    parser.add_argument("--choices", type=chosen, default=list(CHOICES), help="comma-separated, some of "
                        f"{', '.join(CHOICES)} (default: all); each trains a candidate, minutes on a 135M pair")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads, training and evaluating")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    pair = read_pair(args.run)
    steps = pair.steps if args.steps is None else args.steps
    records = records_of(args.run, "initial")
    rows, models, dataset = measure(records, pair, args.choices, args.out, steps, args.threads)
    measured = offline(models, TrainerSettings().golden.path, args.threads)
    print_table(records, pair, steps, dataset, rows, measured)
    (args.out / "datasets.json").write_text(json.dumps({"pair": asdict(pair), "steps": steps, "rows": rows,
                                                        "offline": measured}, indent=1, default=str))


if __name__ == "__main__":
    main()
