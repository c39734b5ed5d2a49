"""benchmarks/redistill_datasets.py re-measures a drift run on the pair that run used: the pair, its replay cache,
its job's recipe overrides and steps read from the run's drift.json (the demo's defaults for a run from before it),
refusals that say what to do, a subset of the choices; and one run of the script on a store of synthetic records."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from distill.data.cache import Manifest
from distill.data.make import Teacher
from distill.demo import task
from distill.online.dataset import build, write_cache
from kdgate.drift.run import DriftSettings
from runtime.demo import DEMO_PRELAUNCH_STUDENT_DIR, DEMO_TEACHER_DIR, DEMO_TOOLS_DIR
from runtime.store.records import ShadowStore
from tests.conftest import ROOT
from tests.distill.online.records import make_records

SCRIPT = ROOT / "benchmarks" / "redistill_datasets.py"
OVERRIDES = ("optim.lr=3e-4", "batch_size=8")


def load_script(name: str):
    """benchmarks/NAME.py as a module (benchmarks/ is not a package); registered first, as its dataclasses look it
    up."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_script("redistill_datasets")


def write_drift_json(run: Path, **fields) -> None:
    """drift.json's `settings` as `kdgate demo drift` writes them (every DriftSettings field as its str()), for a
    run of the demo pair unless `fields` say otherwise."""
    settings = DriftSettings(**({"out": run, "teacher": DEMO_TEACHER_DIR, "student": DEMO_PRELAUNCH_STUDENT_DIR}
                                | fields))
    run.mkdir(parents=True, exist_ok=True)
    (run / "drift.json").write_text(json.dumps({"settings": {key: str(value)
                                                             for key, value in asdict(settings).items()}}))


def replay_cache(folder: Path, tokenizer_dir: Path = DEMO_PRELAUNCH_STUDENT_DIR) -> Path:
    """A teacher cache of a few answers, its token ids in `tokenizer_dir`'s tokenizer (as its hash says)."""
    records = make_records(AutoTokenizer.from_pretrained(DEMO_PRELAUNCH_STUDENT_DIR), task.take("train", 12, seed=7))
    write_cache(folder, build(records, "initial", 0.0, 0.25, None).train, Teacher(DEMO_TEACHER_DIR).name,
                tokenizer_dir, "test")
    return folder


def test_the_pair_its_replay_cache_overrides_and_steps_come_from_drift_json(tmp_path):
    given = replay_cache(tmp_path / "prelaunch-cache")
    write_drift_json(tmp_path / "run", train_steps=300, train_overrides=OVERRIDES, replay_from=given)
    pair = bench.read_pair(tmp_path / "run")
    assert (pair.teacher, pair.student, pair.replay) == (DEMO_TEACHER_DIR, DEMO_PRELAUNCH_STUDENT_DIR, given)
    assert (pair.overrides, pair.steps) == (OVERRIDES, 300)
    # The job's order: the run's steps, then its overrides, then the choice's own (the last word on the recipe).
    config = bench.recipe(tmp_path / "choice", pair, pair.steps, 1, bench.CHOICES["mix-lora"])
    assert (config.steps, config.optim.lr, config.batch_size, config.lora.enabled, config.lora.r) == \
        (300, 3e-4, 8, True, 64)
    assert config.student.init == DEMO_PRELAUNCH_STUDENT_DIR


def test_a_run_given_no_replay_cache_rehearses_the_one_it_made(tmp_path):
    write_drift_json(tmp_path / "run")
    assert bench.read_pair(tmp_path / "run").replay is None
    made = replay_cache(tmp_path / "run" / "replay-cache")
    assert bench.read_pair(tmp_path / "run").replay == made


def test_a_run_from_before_drift_json_gets_the_demo_defaults_and_says_so(tmp_path, capsys):
    made = replay_cache(tmp_path / "run" / "replay-cache")
    pair = bench.read_pair(tmp_path / "run")
    assert pair == bench.Pair(DEMO_TEACHER_DIR, DEMO_PRELAUNCH_STUDENT_DIR, made, (), 800)
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and "drift.json not found" in said and "the demo pair" in said


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_a_drift_json_whose_model_folder_is_gone_is_refused_saying_what_to_do(tmp_path, role):
    write_drift_json(tmp_path / "run", **{role: tmp_path / f"{role}-deleted"})
    with pytest.raises(SystemExit, match=rf"run/drift.json names the .*{role} .*{role}-deleted, which no longer "
                                         r"exists.*run `kdgate demo drift` again"):
        bench.read_pair(tmp_path / "run")


def test_a_replay_cache_in_another_tokenizer_than_the_students_is_refused(tmp_path):
    other = replay_cache(tmp_path / "tools-cache", tokenizer_dir=DEMO_TOOLS_DIR / "student")
    write_drift_json(tmp_path / "run", replay_from=other)
    with pytest.raises(SystemExit, match="tools-cache holds token ids of another tokenizer"):
        bench.read_pair(tmp_path / "run")


def test_choices_pick_a_subset_and_an_unknown_one_is_refused_with_the_known_ones(capsys):
    assert bench.parse_args(["--choices", "mix, off-policy"]).choices == ["mix", "off-policy"]
    assert bench.parse_args([]).choices == ["on-policy", "off-policy", "mix", "mix-lora"]
    with pytest.raises(SystemExit) as refused:
        bench.parse_args(["--choices", "mix,lora"])
    assert refused.value.code == 2
    assert "lora is not a choice; give some of on-policy, off-policy, mix, mix-lora" in capsys.readouterr().err


@pytest.mark.slow
def test_the_script_measures_the_chosen_candidates_on_the_runs_pair(tmp_path):
    """A drift run's store of synthetic records (written through the store's API), one choice, a few steps: the
    table names the pair and the overrides, the cache names the teacher, the candidate trained with the run's
    recipe."""
    run, out = tmp_path / "run", tmp_path / "out"
    write_drift_json(run, train_steps=3, train_overrides=("batch_size=8",))
    (run / "stack").mkdir()
    store = ShadowStore(f"sqlite:///{run / 'stack' / 'store.sqlite3'}")
    try:
        for record in make_records(AutoTokenizer.from_pretrained(DEMO_PRELAUNCH_STUDENT_DIR),
                                   task.take("train", 60, seed=3)):
            store.write(record)
    finally:
        store.close()
    done = subprocess.run([sys.executable, str(SCRIPT), "--run", str(run), "--out", str(out), "--choices", "mix",
                           "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    header = next(line for line in done.stdout.splitlines() if "records served by the pre-launch student" in line)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert f"teacher {DEMO_TEACHER_DIR}, pre-launch student {DEMO_PRELAUNCH_STUDENT_DIR}" in header
    assert "recipe overrides: batch_size=8" in header and "3 steps each" in header and "replay: none" in header
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| pre-launch student", "| the mix (default)"]
    assert Manifest.load(out / "choice-mix" / "train").teacher == str(DEMO_TEACHER_DIR.resolve())
    saved = json.loads((out / "datasets.json").read_text())
    assert saved["steps"] == 3 and saved["rows"]["the mix (default)"]["dataset"]["heldout"] == 12
    trained = yaml.safe_load((out / "choice-mix" / "out" / "model" / "distill_config.yaml").read_text())
    assert (trained["steps"], trained["batch_size"], trained["student"]["init"]) == \
        (3, 8, str(DEMO_PRELAUNCH_STUDENT_DIR))
