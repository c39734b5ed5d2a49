"""`kdgate demo drift` starts from an empty folder each run, never empties one it did not make, and runs the pair
it is given: the gateway's student and teacher, the student the trainer's job re-distils (the store's first
version), the teacher that makes the replay cache."""

from __future__ import annotations

import pytest

from distill.data.cache import Manifest
from gateway.settings import load_settings
from gateway.students.loader import initial_version
from kdgate.drift.progress import Ticker
from kdgate.drift.run import DriftSettings, handoff, replay_cache
from kdgate.drift.stack import MARKER, fresh_folder, write_gateway_config
from runtime.demo import DEMO_PRELAUNCH_STUDENT_DIR, DEMO_STUDENT_DIR, DEMO_TEACHER_DIR
from runtime.tokenizer_hash import tokenizer_hash

# a pair other than the demo's: the demo student stands in for a teacher (the same tokenizer, another folder)
TEACHER, STUDENT = DEMO_STUDENT_DIR, DEMO_PRELAUNCH_STUDENT_DIR


def test_a_previous_runs_store_does_not_leak_into_the_next(tmp_path):
    folder = fresh_folder(tmp_path / "stack")
    (folder / "store.sqlite3").write_text("the last run's jobs")
    again = fresh_folder(tmp_path / "stack")
    assert sorted(path.name for path in again.iterdir()) == [MARKER]


def test_a_folder_it_did_not_make_is_left_alone(tmp_path):
    folder = tmp_path / "stack"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="was not made by `kdgate demo drift`"):
        fresh_folder(folder)
    assert (folder / "notes.txt").read_text() == "mine"


def test_the_gateway_serves_the_given_pair_and_the_job_trains_the_given_student(tmp_path):
    scenario = DriftSettings(teacher_target=0.4, handoff_floor=0.47)
    config = write_gateway_config(tmp_path, TEACHER, STUDENT, sample_rate=0.5, handoff=handoff(scenario), threads=1)
    settings = load_settings(config)
    assert settings.teacher.model_dir.resolve() == TEACHER.resolve() != DEMO_TEACHER_DIR.resolve()
    assert settings.student.model_dir.resolve() == STUDENT.resolve()
    assert settings.routing.handoff.target_teacher_fraction == 0.4
    assert settings.routing.handoff.enabled and settings.routing.handoff.min_prob == 0.47
    default = load_settings(write_gateway_config(tmp_path, TEACHER, STUDENT, 0.5, handoff(DriftSettings()), 1))
    assert default.routing.handoff.min_prob == type(default.routing.handoff)().min_prob  # the gateway's own
    # the trainer's job trains from the store's active version, and a store starts with the configured student
    assert initial_version(settings).model_dir == str(STUDENT.resolve())


def test_the_replay_cache_is_the_given_teachers_and_another_teachers_is_refused(tmp_path):
    said: list[str] = []
    with Ticker(said.append, interval_s=60.0) as ticker:
        cache = replay_cache(tmp_path, TEACHER, prompts=4, threads=1, ticker=ticker)
        manifest = Manifest.load(cache)
        assert manifest.teacher == str(TEACHER.resolve()) and manifest.rows == 4
        assert manifest.tokenizer_hash == tokenizer_hash(STUDENT)
        assert replay_cache(tmp_path, TEACHER, prompts=4, threads=1, ticker=ticker) == cache  # kept between runs
        assert said[-1] == f"reusing the replay cache {cache}"
        with pytest.raises(SystemExit, match="was made by the teacher"):
            replay_cache(tmp_path, DEMO_TEACHER_DIR, prompts=4, threads=1, ticker=ticker)


def test_a_replay_cache_short_of_its_prompts_is_resumed_not_reused(tmp_path):
    """What an interrupted cache looks like to the next run (its manifest is written before its first answer)."""
    with Ticker(lambda line: None, interval_s=60.0) as ticker:
        cache = replay_cache(tmp_path, TEACHER, prompts=3, threads=1, ticker=ticker)
        assert replay_cache(tmp_path, TEACHER, prompts=5, threads=1, ticker=ticker) == cache
    assert Manifest.load(cache).rows == 5
