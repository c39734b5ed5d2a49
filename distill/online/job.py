"""One re-distillation job, step by step, each step written to the job's row as it starts:

    gather    records since the active student version became active (too few → `skipped`)
    dataset   on-policy + off-policy examples mixed, a time-ordered held-out slice (`distill.online.dataset`)
    train     the recipe from the active student's weights (a full fine-tune by default), in this process
    evaluate  the active student and the candidate on the held-out slice and the golden set
    gate      admitted or rejected, every figure recorded (`distill.online.gate`)
    recalibrate  the routing thresholds refitted to the candidate on the held-out records (a confidence
              policy's; with a teacher-share target, the handoff floor)
    promote   through the gateway's admin API, as a canary first when configured

`kdgate trainer run-job <id>` runs it: as a subprocess of the service (the local runner) or as the container of a
Kubeflow TrainJob. Any failure ends the job `failed` with its reason; the active student keeps serving, since
nothing reaches the gateway before the promote step and the promotion itself is one compare-and-swap there.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

from distill.online.dataset import build, check_replay_tokenizer, gather, write_cache
from distill.online.evaluate import figures as evaluate_figures
from distill.online.evaluate import read_golden
from distill.online.gate import judge
from distill.online.promote import Gateway
from distill.online.runner import job_folder, read_tail
from distill.online.settings import TrainerSettings
from runtime.redact import redact
from runtime.store.records import ShadowStore
from runtime.store.train_jobs import TrainJob, TrainJobs
from runtime.store.versions import StudentVersion, StudentVersions

log = logging.getLogger(__name__)
GATHER_POLL_S = 5.0


class JobEnded(Exception):
    """The job ends early, with this state and reason (skipped, or a failure that is not a bug)."""

    def __init__(self, state: str, reason: str):
        super().__init__(reason)
        self.state, self.reason = state, reason


def run_job(job_id: int, settings: TrainerSettings) -> str:
    store = ShadowStore(settings.store_url)
    jobs = TrainJobs(store)
    try:
        job = jobs.get(job_id)
        if job is None:
            raise SystemExit(f"no job {job_id} in {redact(settings.store_url)}")
        if job.state == "queued":
            jobs.start(job_id, runner_ref="run-job")  # run by hand, or by a TrainJob's container
        elif job.state != "running":
            raise SystemExit(f"job {job_id} is {job.state}; only a queued or running job can run")
        try:
            state, reason, figures = Job(job, settings, store, jobs).run()
        except JobEnded as ended:
            state, reason, figures = ended.state, ended.reason, None
        except Exception as error:  # the job's own failure: recorded, never a half-done promotion
            log.error("job %d failed:\n%s", job_id, traceback.format_exc())
            state, reason, figures = "failed", f"{type(error).__name__}: {error}", None
        tail = read_tail(job_folder(settings, job_id) / "job.log")
        jobs.finish(job_id, state, reason, figures, tail or None)
        print(f"job {job_id}: {state}{': ' + reason if reason else ''}", flush=True)
        return state
    finally:
        store.close()


class Job:
    def __init__(self, job: TrainJob, settings: TrainerSettings, store: ShadowStore, jobs: TrainJobs):
        self.job, self.settings, self.store, self.jobs = job, settings, store, jobs
        self.versions = StudentVersions(store)
        self.folder = job_folder(settings, job.id)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.figures: dict = {"trigger": job.trigger, "options": job.options}
        self.name = f"rd-{job.id}"  # the candidate's version name

    def step(self, name: str, progress: float) -> None:
        print(f"step {name}", flush=True)
        self.jobs.progress(self.job.id, name, progress, figures=self.figures,
                           log_tail=read_tail(self.folder / "job.log"), candidate=self.name)

    def run(self) -> tuple[str, str | None, dict]:
        self.step("gather", 0.0)
        slot = self.versions.slot()
        if slot.active is None:
            raise JobEnded("skipped", "no active student version in the store, so no usable records: has a "
                                      "gateway served from this store (`store_url`)?")
        active = self.versions.get(slot.active)
        options = self.job.options.get("dataset") or {}
        dataset_settings = self.settings.dataset.model_copy(update=options)
        deadline = time.monotonic() + dataset_settings.gather_wait_s
        while True:
            records = gather(self.store, active.changed_at, dataset_settings.max_records)
            usable = sum(record.token_ids and bool(record.teacher_tokens) for record in records)
            if usable >= dataset_settings.min_records or time.monotonic() >= deadline:
                break
            print(f"gather: {usable} of {dataset_settings.min_records} records; waiting", flush=True)
            time.sleep(GATHER_POLL_S)
        teacher_version = next((record.teacher_version for record in reversed(records) if record.teacher_version),
                               None)
        dataset = build(records, active.name, dataset_settings.on_policy_share, dataset_settings.holdout_share,
                        teacher_version, replay_cache=dataset_settings.replay_cache,
                        replay_share=dataset_settings.replay_share)
        self.figures["dataset"] = dataset.figures | {"since": active.changed_at.isoformat() if active.changed_at
                                                     else None, "active": active.name,
                                                     "teacher_version": teacher_version}
        if dataset.figures["usable"] < dataset_settings.min_records or not dataset.train:
            raise JobEnded("skipped", f"{dataset.figures['usable']} usable records since `{active.name}` became "
                                      f"active (with token ids, from the current teacher); "
                                      f"{dataset_settings.min_records} needed (`dataset.min_records`)")
        self.step("dataset", 0.1)
        student_dir = self._weights(active)
        if dataset_settings.replay_cache is not None:  # checked before anything is trained on its ids
            try:
                check_replay_tokenizer(dataset_settings.replay_cache, student_dir)
            except ValueError as error:
                raise JobEnded("failed", str(error)) from None
        write_cache(self.folder / "train", dataset.train, records[-1].teacher_model, student_dir,
                    f"records since {active.changed_at} ({active.name})")
        self.step("train", 0.2)
        candidate_dir = self._train(student_dir)
        self.step("evaluate", 0.7)
        golden = read_golden(self.settings.golden.path, self.settings.golden.examples)
        self.figures["evaluate"] = {"active": evaluate_figures(student_dir, golden, dataset.heldout),
                                    "candidate": evaluate_figures(candidate_dir, golden, dataset.heldout)}
        self.step("gate", 0.9)
        gate = judge(self.figures["evaluate"]["active"], self.figures["evaluate"]["candidate"], self.settings.gate)
        self.figures["gate"] = gate
        admitted_with = {"job": self.job.id, "teacher_version": teacher_version, "gate": gate,
                         "evaluate": self.figures["evaluate"], "dataset": self.figures["dataset"]}
        if gate["decision"] == "rejected":
            self.versions.register(StudentVersion(name=self.name, kind="model", model_dir=str(candidate_dir),
                                                  state="rejected", figures=admitted_with,
                                                  notes=f"gate: failed {', '.join(gate['failed'])}"))
            return "rejected", f"the gate failed: {', '.join(gate['failed'])}", self.figures
        if not self.job.options.get("promote", True):
            return "succeeded", "admitted; not promoted (promote: false)", self.figures
        routing = self._recalibrate(active, candidate_dir, dataset)
        self.step("promote", 0.95)
        self.figures["promote"] = self._promote(candidate_dir, admitted_with, routing)
        return "succeeded", None, self.figures

    def _weights(self, active: StudentVersion) -> Path:
        """The active student's weights as a model folder (a LoRA version merged over its base)."""
        if active.kind == "model":
            return Path(active.model_dir)
        first = self.versions.list()[0]  # the gateway's configured student
        base = first.model_dir or self.settings.student_base_dir
        if active.kind == "endpoint" and active.name == first.name and self.settings.student_base_dir:
            return Path(self.settings.student_base_dir)  # the configured vLLM student's own weights
        if active.kind == "lora" and base:
            merged = self.folder / "active"
            if not (merged / "config.json").is_file():
                from distill.online.weights import merge_adapter

                merge_adapter(Path(base), Path(active.adapter_path), merged)
            return merged
        raise JobEnded("failed", f"no weights for the active version `{active.name}` ({active.kind}): the gateway's "
                                 "student is served over HTTP, so set the trainer's `student_base_dir` to its model "
                                 "folder (a server of its own, blue/green, is not trained from)")

    def _train(self, student_dir: Path) -> Path:
        from distill.config import load_config
        from distill.recipe import run

        adapter = self.settings.train.register_as == "adapter"
        implied = ["lora.enabled=true"] if adapter else []  # an adapter version is what LoRA training leaves
        overrides = [f"student.init={student_dir}", f"cache={self.folder / 'train'}", f"out={self.folder / 'out'}",
                     *implied, *self.settings.train.overrides, *(self.job.options.get("train_overrides") or [])]
        if self.settings.train.threads:
            overrides.append(f"threads={self.settings.train.threads}")
        config = load_config(self.settings.train.config, overrides)
        if adapter and not config.lora.enabled:  # refused before training, not at the promotion after it
            raise JobEnded("failed", "`train.register_as` is adapter, but the recipe's overrides turn LoRA off "
                                     "(`lora.enabled=false`): no adapter would be written to register")
        model_dir = run(config)
        if adapter and not (model_dir / "adapter" / "adapter_config.json").is_file():
            raise JobEnded("failed", f"training wrote no LoRA adapter in {model_dir / 'adapter'}: nothing to "
                                     "register as an adapter version")
        history = (model_dir / "training_log.json")
        self.figures["train"] = {"steps": config.steps, "lora": config.lora.enabled,
                                 "log": history.read_text()[-2000:] if history.is_file() else None}
        return model_dir

    def _recalibrate(self, active: StudentVersion, candidate_dir: Path, dataset) -> dict:
        """The candidate's own routing thresholds, refitted on the held-out records: a confidence policy's (its
        threshold was fitted to the active student) and, with a target, the handoff floor."""
        from distill.online.recalibrate import recalibrate, recalibrate_handoff

        routing: dict = {}
        if active.policy_file or self.settings.handoff_target_teacher_fraction is not None:
            self.step("recalibrate", 0.93)
        if active.policy_file:
            refit = recalibrate(candidate_dir, Path(active.policy_file), dataset.heldout,
                                self.folder / "router-policy.json")
            self.figures["recalibrate"] = refit
            routing["policy_file"] = str(Path(refit["policy_file"]).resolve())
        if self.settings.handoff_target_teacher_fraction is not None:
            refit = recalibrate_handoff(candidate_dir, dataset.heldout_records,
                                        self.settings.handoff_target_teacher_fraction)
            self.figures["recalibrate_handoff"] = refit
            routing["handoff_min_prob"] = refit["min_prob"]
        return routing

    def _promote(self, candidate_dir: Path, admitted_with: dict, routing: dict) -> dict:
        gateway = Gateway(self.settings.gateway)
        canary = self.job.options.get("canary_fraction") or self.settings.canary_fraction
        source = ({"adapter_path": str((candidate_dir / "adapter").resolve())}
                  if self.settings.train.register_as == "adapter" else {"model_dir": str(candidate_dir.resolve())})
        gateway.register(source | routing | {"name": self.name, "figures": admitted_with,
                                   "notes": f"re-distilled by job {self.job.id} ({self.job.trigger})"})
        status = gateway.promote(self.name, canary)
        return {"version": self.name, "canary_fraction": canary, "slot": status}

