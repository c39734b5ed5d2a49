"""A job that registers its student as a LoRA adapter (`train.register_as: adapter`, a vLLM student's runtime
LoRA) trains LoRA whatever the recipe says, and refuses before training when its overrides turn LoRA off: the
chart's settings registered adapters while the recipe fine-tuned every weight, so each job trained in full and
then failed at promotion on an adapter folder that did not exist (tests/deploy/test_chart_loop.py runs one such
job to a promoted version)."""

from __future__ import annotations

from distill.online.job import run_job
from runtime.store.records import ShadowStore
from runtime.store.train_jobs import TrainJobs
from tests.distill.online.test_service import seed_records, trainer_config


def test_lora_turned_off_for_an_adapter_version_is_refused_before_training(tmp_path, demo_dirs):
    settings, _ = trainer_config(tmp_path, train={"threads": 1, "register_as": "adapter",
                                                  "overrides": ["lora.enabled=false", "steps=5"]})
    seed_records(settings, demo_dirs, count=30)
    store = ShadowStore(settings.store_url)
    job, _ = TrainJobs(store).create("manual", {})
    store.close()
    assert run_job(job.id, settings) == "failed"
    store = ShadowStore(settings.store_url)
    ended = TrainJobs(store).get(job.id)
    store.close()
    assert "`train.register_as` is adapter" in ended.reason and "lora.enabled=false" in ended.reason
    assert ended.step == "train" and not (settings.work_dir / f"job-{job.id}" / "out").exists()  # nothing trained
