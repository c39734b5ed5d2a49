"""`kdgate demo drift` as a user reads it: its help has --threads, the command it prints to watch the trainer's
jobs works against a real trainer service, as typed, and a pair it cannot run (a folder that is not a model, a
student with another tokenizer, a recipe override the job would refuse) is refused before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from distill.config import load_config
from distill.online.settings import TrainSettings
from kdgate.drift.run import DriftSettings, _trainer, resolved
from kdgate.drift.stack import Stack, start_trainer
from runtime.demo import DEMO_TOOLS_DIR
from tests.conftest import ROOT


def test_demo_drift_has_threads():
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", "demo", "drift", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=os.environ | {"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "--threads" in done.stdout


def test_the_printed_watch_command_uses_a_key_the_trainer_accepts(tmp_path):
    stack = Stack(tmp_path)
    try:
        start_trainer(stack, f"sqlite:///{tmp_path / 'store.sqlite3'}", "http://127.0.0.1:9", {})
        assert oct(stack.admin_key_file.stat().st_mode & 0o777) == "0o600"
        watch = shell(stack.watch_command())
        assert watch.returncode == 0, watch.stderr
        assert "state" in watch.stdout and "trigger" in watch.stdout
        # what the demo used to leave a user: Alertmanager's token, which the jobs API refuses
        alerts_key = tmp_path / "alerts-key"
        alerts_key.write_text(stack.alerts_key)
        refused = shell(stack.watch_command().replace(str(stack.admin_key_file), str(alerts_key)))
        assert refused.returncode == 1 and "403" in refused.stderr, refused.stderr
    finally:
        stack.stop()


def shell(command: str) -> subprocess.CompletedProcess:
    """`command` as a user types it, with the venv's `kdgate` first on PATH and no KDGATE_ settings of ours."""
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, env=user_env())


def user_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    return env | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}


def test_a_folder_that_is_not_a_model_is_refused_naming_its_option(tmp_path):
    """Checked before anything starts: no replay cache, no stack under --out."""
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    for option in ("--teacher", "--student"):
        out = tmp_path / f"run{option}"
        done = subprocess.run([sys.executable, "-m", "kdgate.cli", "demo", "drift", option, str(empty), "--out",
                               str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60, env=user_env())
        assert done.returncode == 2, done.stderr
        assert f"Invalid value for {option}" in done.stderr and "config.json" in done.stderr, done.stderr
        assert not out.exists()


def test_a_student_with_another_tokenizer_than_the_teacher_is_refused():
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", "demo", "drift", "--student",
                           str(DEMO_TOOLS_DIR / "student"), "--out", "/nonexistent/never-made"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=user_env())
    assert done.returncode == 2, done.stderr
    assert "Invalid value for --student" in done.stderr and "another tokenizer" in done.stderr, done.stderr


def test_a_recipe_override_the_job_would_refuse_is_refused_before_anything_starts(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", "demo", "drift", "--train-override", "optim.lr=3e-4",
                           "--train-override", "optim.learning_rate=3e-4", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=user_env())
    assert done.returncode == 2, done.stderr
    assert "Invalid value for --train-override" in done.stderr and "learning_rate" in done.stderr, done.stderr
    assert not out.exists()


def test_a_gather_wait_past_the_runs_own_wait_is_refused_before_anything_starts(tmp_path):
    """A slow pair's records come slowly, so the job's wait for them is the user's (`--gather-wait-s`); one the run
    would not outlast (it stops waiting for a promotion after --max-wait-s) is refused, naming both."""
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", "demo", "drift", "--gather-wait-s", "1200",
                           "--max-wait-s", "900", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=user_env())
    assert done.returncode == 2, done.stderr
    message = " ".join(done.stderr.split())
    assert "Invalid value for --gather-wait-s" in message and "--max-wait-s 900" in message, done.stderr
    assert not out.exists()
    assert _trainer(DriftSettings(gather_wait_s=1200.0), tmp_path)["dataset"]["gather_wait_s"] == 1200.0


def test_the_jobs_recipe_gets_the_overrides_after_the_steps(tmp_path):
    settings = DriftSettings(train_steps=300, train_overrides=("optim.lr=3e-4", "batch_size=8"))
    overrides = _trainer(settings, tmp_path / "replay-cache")["train"]["overrides"]
    assert overrides == ["steps=300", "optim.lr=3e-4", "batch_size=8"]
    config = load_config(TrainSettings().config, overrides)  # as the job loads it (and its own paths after)
    assert (config.steps, config.optim.lr, config.batch_size) == (300, 3e-4, 8)


def test_a_replay_cache_the_teacher_did_not_make_is_refused_before_anything_starts(tmp_path):
    """--replay-cache takes the pre-launch student's own cache instead of making one; one that is not a cache, is
    another teacher's or holds no answer is refused naming the option, with no stack or cache under --out."""
    from distill.data.cache import Manifest
    from distill.data.make import Teacher
    from runtime.demo import DEMO_TEACHER_DIR
    from runtime.tokenizer_hash import tokenizer_hash

    def manifest(folder: str, **fields) -> Path:
        made = dict(teacher=Teacher(DEMO_TEACHER_DIR).name, tokenizer_hash=tokenizer_hash(DEMO_TEACHER_DIR), top_k=20,
                    temperature=1.0, samples_per_prompt=1, seed=0, prompts="prelaunch-prompts.jsonl", rows=10,
                    kept=10) | fields
        (tmp_path / folder).mkdir()
        Manifest(**made).save(tmp_path / folder)
        return tmp_path / folder

    (tmp_path / "empty").mkdir()
    cases = {tmp_path / "empty": "not a teacher cache",
             manifest("other-teacher", teacher="/models/another-teacher"): "made by the teacher /models/another",
             manifest("other-tokenizer", tokenizer_hash="0" * 64): "another tokenizer",
             manifest("interrupted", kept=0, rows=0): "holds no kept answer"}
    for cache, reason in cases.items():
        out = tmp_path / f"run-{cache.name}"
        done = subprocess.run([sys.executable, "-m", "kdgate.cli", "demo", "drift", "--replay-cache", str(cache),
                               "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=user_env())
        assert done.returncode == 2, done.stderr
        assert "Invalid value for --replay-cache" in done.stderr and reason in " ".join(done.stderr.split()), \
            done.stderr
        assert not out.exists()


def test_the_run_names_its_pair_by_absolute_folders(tmp_path, monkeypatch):
    """drift.json's settings are read later, from another folder (benchmarks/redistill_datasets.py retrains on the
    run's pair): a relative --teacher given by the user would name nothing there."""
    monkeypatch.chdir(tmp_path)
    settings = resolved(DriftSettings(out=Path("run"), teacher=Path("pair/teacher"), student=Path("pair/student"),
                                      replay_from=Path("pair/cache")))
    assert (settings.out, settings.teacher, settings.student, settings.replay_from) == (
        tmp_path / "run", tmp_path / "pair" / "teacher", tmp_path / "pair" / "student", tmp_path / "pair" / "cache")
    assert resolved(DriftSettings()).replay_from is None
