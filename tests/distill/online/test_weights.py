"""Where a job's starting weights come from: a local student's folder, a vLLM student's checkpoint given to the
trainer (`student_base_dir`), a LoRA version merged over either; a clear failure when there are none."""

from __future__ import annotations

import pytest

from distill.online.job import Job, JobEnded
from runtime.store.records import ShadowStore
from runtime.store.train_jobs import TrainJobs
from runtime.store.versions import StudentVersion, StudentVersions
from tests.distill.online.test_service import trainer_config


def job_for(tmp_path, **settings) -> tuple[Job, StudentVersion]:
    config, _ = trainer_config(tmp_path, **settings)
    store = ShadowStore(config.store_url)
    StudentVersions(store).seed(StudentVersion(name="initial", kind="endpoint", base_url="http://vllm:8000/v1",
                                               served_model="student"))
    job, _ = TrainJobs(store).create("manual", {})
    return Job(job, config, store, TrainJobs(store)), StudentVersions(store).get("initial")


def test_a_vllm_student_trains_from_the_weights_the_trainer_is_given(tmp_path, demo_dirs):
    job, active = job_for(tmp_path, student_base_dir=str(demo_dirs[0]))
    assert job._weights(active) == demo_dirs[0]


def test_without_them_the_job_fails_saying_which_setting(tmp_path):
    job, active = job_for(tmp_path)
    with pytest.raises(JobEnded, match="set the trainer's `student_base_dir`") as ended:
        job._weights(active)
    assert ended.value.state == "failed"
