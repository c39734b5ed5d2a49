"""The trainer's metrics, read from the store at scrape time: whatever process ran a job, and across restarts,
the figures are the store's."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from runtime.store.records import ShadowStore
from runtime.store.train_jobs import TrainJobs
from runtime.store.versions import StudentVersions

DURATION_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, float("inf"))
RECENT = 1000  # jobs the counters and the duration histogram are read from


class StoreCollector(Collector):
    def __init__(self, store: ShadowStore, jobs: TrainJobs):
        self.jobs = jobs
        self.versions = StudentVersions(store)

    def collect(self):
        counts = self.jobs.counts()
        by_state = GaugeMetricFamily("kdgate_trainer_jobs", "Re-distillation jobs by state", labels=["state"])
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state
        recent = self.jobs.list(RECENT)
        durations = sorted((job.finished_at - job.started_at).total_seconds() for job in recent
                           if job.started_at and job.finished_at)
        buckets = [(str(edge), sum(value <= edge for value in durations)) for edge in DURATION_BUCKETS]
        yield HistogramMetricFamily("kdgate_trainer_job_duration_seconds", "Run time of ended jobs (the last "
                                    f"{RECENT})", buckets=buckets, sum_value=sum(durations))
        decisions = CounterMetricFamily("kdgate_trainer_gate_decisions", "Gate decisions on trained candidates",
                                        labels=["decision"])
        records = CounterMetricFamily("kdgate_trainer_records_used", "Records that jobs trained and evaluated on")
        gated = {"admitted": 0, "rejected": 0}
        used = 0
        for job in recent:
            figures = job.figures or {}
            decision = (figures.get("gate") or {}).get("decision")
            if decision in gated:
                gated[decision] += 1
            used += (figures.get("dataset") or {}).get("records", 0)
        for decision, count in gated.items():
            decisions.add_metric([decision], count)
        records.add_metric([], used)
        yield decisions
        yield records
        versions = self.versions.list()
        promotions = sum(version.state in ("active", "retired") and version.previous is not None
                         for version in versions)
        yield CounterMetricFamily("kdgate_trainer_promotions", "Student versions that became active", value=promotions)
        states = GaugeMetricFamily("kdgate_trainer_student_versions", "Student versions by state (rolled-back "
                                   "canaries are `rejected`; the gateway counts rollbacks in "
                                   "kdgate_student_rollbacks_total)", labels=["state"])
        for state in ("candidate", "canary", "active", "retired", "rejected"):
            states.add_metric([state], sum(version.state == state for version in versions))
        yield states
        active = GaugeMetricFamily("kdgate_trainer_active_student", "1 for the active student version",
                                   labels=["student_version"])
        slot = self.versions.slot()
        if slot.active:
            active.add_metric([slot.active], 1)
        yield active
