"""Prometheus metrics of the gateway, in a registry per app (tests run several apps in one process).

With several worker processes (`gateway.workers`) the samples live in prometheus-client's multiprocess files: each
gauge's `multiprocess_mode` says how the workers' values combine (`livesum`: summed over live workers; `livemostrecent`:
the last one written, for per-worker views such as the threshold and rolling shares).

Names follow Prometheus conventions (`_seconds`, `_total` added by the client for counters) and carry the route
(`student`, `teacher`; `engine` on a standalone engine server) so every panel can split by it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
                   5.0, 10.0, 20.0, 60.0)
# Probability-like scores (min_prob, logistic, isotonic) fill 0..1; log-probability scores fill the negative side.
CONFIDENCE_BUCKETS = (-5.0, -2.0, -1.0, -0.5, -0.2, -0.1, -0.05, 0.0, *(round(0.05 * i, 2) for i in range(1, 21)))
KL_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
SHARE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("kdgate_requests", "Chat completion requests by route, outcome and stream mode",
                                ["route", "outcome", "stream"], registry=r)
        self.ttft = Histogram("kdgate_time_to_first_token_seconds", "Request received to first content token sent",
                              ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("kdgate_e2e_request_latency_seconds", "Request received to last byte of the answer",
                             ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("kdgate_inter_token_latency_seconds", "Gap between two streamed content chunks",
                             ["route"], buckets=TOKEN_GAP_BUCKETS, registry=r)
        self.prompt_tokens = Counter("kdgate_prompt_tokens", "Prompt tokens, as counted by the backend",
                                     ["route"], registry=r)
        self.completion_tokens = Counter("kdgate_completion_tokens", "Completion tokens, as counted by the backend",
                                         ["route"], registry=r)
        # cost (gateway.cost): series only when every backend is priced (`student.cost`, `teacher.cost`)
        self.cost = Counter("kdgate_cost_dollars", "Dollars of backend work, from the tokens each backend read and "
                            "wrote, by the route that finished the answer (student, teacher; shadow: the shadow "
                            "worker's teacher calls) and the backend that did it", ["route", "backend"], registry=r)
        self.cost_all_teacher = Counter("kdgate_cost_all_teacher_dollars", "What the same answers would have cost on "
                                        "the teacher alone (their prompt and completion tokens at the teacher's "
                                        "prices), by the route that served them", ["route"], registry=r)
        self.in_flight = Gauge("kdgate_requests_in_flight", "Requests being served now", ["route"],
                               multiprocess_mode="livesum", registry=r)
        self.errors = Counter("kdgate_errors", "Failed requests by backend and error class",
                              ["backend", "error"], registry=r)
        self.decisions = Counter("kdgate_route_decisions", "Routing decisions by route and reason (policy:*, "
                                 "forced:header, confidence:high|low|no_tokens, handoff, student_error, teacher_unavailable)", ["route", "reason"],
                                 registry=r)
        self.confidence = Histogram("kdgate_confidence_score", "Confidence score of the student's held-back "
                                    "tokens (higher: surer)", buckets=CONFIDENCE_BUCKETS, registry=r)
        self.threshold = Gauge("kdgate_routing_threshold", "Current confidence threshold; below it escalates",
                               multiprocess_mode="livemostrecent", registry=r)
        self.teacher_fraction = Gauge("kdgate_teacher_fraction", "Share of the last 500 answered requests (not "
                                      "forced) the teacher served or finished (a handoff counts)",
                                      multiprocess_mode="livemostrecent", registry=r)
        self.teacher_fraction_target = Gauge("kdgate_teacher_fraction_target", "The teacher share the threshold "
                                             "was calibrated to (or handoff's measured share, "
                                             "routing.handoff.target_teacher_fraction)", multiprocess_mode="livemax",
                                             registry=r)
        self.hold_back = Histogram("kdgate_hold_back_seconds", "Time spent holding the student's first tokens "
                                   "back before the confidence decision", buckets=LATENCY_BUCKETS, registry=r)
        self.discarded_tokens = Counter("kdgate_escalated_student_tokens", "Student tokens generated, then "
                                        "discarded because the request escalated", registry=r)
        self.fallbacks = Counter("kdgate_fallbacks", "Requests served by the other backend because one failed or "
                                 "missed its first-token deadline, by reason (student_error: the teacher served; "
                                 "teacher_unavailable: the student's own answer)", ["reason"], registry=r)
        self.handoffs = Counter("kdgate_handoffs", "Answers the student started and the teacher finished "
                                "(a student token fell below the handoff probability)", registry=r)
        # shadow comparisons (gateway.shadow)
        self.shadow_kl = Histogram("kdgate_shadow_kl", "Mean per-token KL(teacher||student) of a shadowed answer "
                                   "(top-k with tail bucket: a lower bound)", buckets=KL_BUCKETS, registry=r)
        self.shadow_nll = Histogram("kdgate_shadow_teacher_nll", "Mean teacher negative log-likelihood per token of "
                                    "a shadowed student answer", buckets=KL_BUCKETS, registry=r)
        self.shadow_top1 = Histogram("kdgate_shadow_top1_agreement", "Share of a shadowed answer's tokens that are "
                                     "the teacher's top-1", buckets=SHARE_BUCKETS, registry=r)
        self.shadow_answers = Counter("kdgate_shadow_answers", "Shadowed answers by whether the student's final "
                                      "answer equals the teacher's", ["agree"], registry=r)
        self.shadow_unaligned = Counter("kdgate_shadow_unaligned", "Shadowed answers the teacher tokenized "
                                        "differently (no per-token KL)", registry=r)
        self.shadow_kl_rolling = Gauge("kdgate_shadow_kl_rolling", "Mean KL over the last shadowed answers "
                                       "(shadow.window)", multiprocess_mode="livemostrecent", registry=r)
        self.shadow_top1_rolling = Gauge("kdgate_shadow_top1_agreement_rolling", "Mean top-1 agreement over the "
                                         "last shadowed answers", multiprocess_mode="livemostrecent", registry=r)
        self.shadow_agreement_rolling = Gauge("kdgate_shadow_answer_agreement_rolling", "Share of the last shadowed "
                                              "answers equal to the teacher's", multiprocess_mode="livemostrecent",
                                              registry=r)
        self.shadow_queue = Gauge("kdgate_shadow_queue_depth", "Shadow jobs waiting for the teacher",
                                  multiprocess_mode="livesum", registry=r)
        self.shadow_acknowledged = Counter("kdgate_shadow_acknowledged", "Shadow jobs committed to the store: from "
                                           "here a crash delays them, never loses them", registry=r)
        self.store_restored = Counter("kdgate_store_file_restored", "Times the SQLite store's file was found deleted "
                                      "or replaced while open and was put back with its content", registry=r)
        self.shadow_pending = Gauge("kdgate_shadow_pending_jobs", "Shadow jobs in the store not yet completed (all "
                                    "processes)", multiprocess_mode="livemax", registry=r)
        self.shadow_sampled = Counter("kdgate_shadow_sampled", "Jobs queued for shadow work, by kind (shadow, "
                                      "escalation)", ["kind"], registry=r)
        self.shadow_dropped = Counter("kdgate_shadow_dropped", "Shadow jobs or records dropped, by reason "
                                      "(queue_full, store_error, store_unavailable, rejected, retries_exhausted)", ["reason"], registry=r)
        self.shadow_skipped = Counter("kdgate_shadow_skipped", "Shadow and escalation jobs not made, by reason "
                                      "(raw_prompt: a /v1/completions request, which records as chat messages cannot "
                                      "hold) and kind (shadow, escalation)", ["reason", "kind"], registry=r)
        self.shadow_failed = Counter("kdgate_shadow_failed", "Shadow jobs that failed, by stage (timeout, teacher, "
                                     "internal)", ["stage"], registry=r)
        self.shadow_store_write = Histogram("kdgate_shadow_store_write_seconds", "Time to write one shadow record",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.api_requests = Counter("kdgate_api_requests", "API calls by the key's name (bounded: the configured "
                                    "keys, admin, metrics, anonymous, unknown) and HTTP status", ["key", "status"],
                                    registry=r)
        self.admitted = Gauge("kdgate_admitted_requests", "Chat requests holding an admission slot (from admission "
                              "to the answer's last byte, whatever backend state)", multiprocess_mode="livesum",
                              registry=r)
        self.queued = Gauge("kdgate_queued_requests", "Chat requests waiting for an admission slot",
                            multiprocess_mode="livesum", registry=r)
        self.shed = Counter("kdgate_shed_requests", "Requests refused with 503 for capacity, by reason "
                            "(queue_full, queue_timeout)", ["reason"], registry=r)
        self.limited = Counter("kdgate_rate_limited_requests", "Requests refused with 429, by key and by which "
                               "limit (requests, tokens)", ["key", "kind"], registry=r)
        self.limit_errors = Counter("kdgate_limit_errors", "Rate-limit checks that could not be made (Redis down "
                                    "or slow); those requests were admitted", registry=r)
        self.circuit_state = Gauge("kdgate_circuit_state", "A backend's circuit: 0 closed, 1 half-open (one probe), "
                                   "2 open (its requests fail at once; fallbacks serve)", ["backend"],
                                   multiprocess_mode="livemax", registry=r)
        self.circuit_transitions = Counter("kdgate_circuit_transitions", "Circuit state changes by backend and the "
                                           "state entered", ["backend", "state"], registry=r)
        self.retries = Counter("kdgate_backend_retries", "Requests sent again after failing before any response "
                               "(within the retry budget)", ["backend"], registry=r)
        self.backend_up = Gauge("kdgate_backend_up", "1 when the backend passed its last readiness check",
                                ["backend"], multiprocess_mode="livemostrecent", registry=r)
        # student versions (gateway.students): labelled only with the versions serving now (active, canary)
        self.student_requests = Counter("kdgate_student_requests", "Requests by the student version that served "
                                        "(or started) them and outcome", ["student_version", "outcome"], registry=r)
        self.student_escalations = Counter("kdgate_student_escalations", "Requests a student version started and "
                                           "the teacher served or finished", ["student_version"], registry=r)
        self.student_ttft = Histogram("kdgate_student_time_to_first_token_seconds", "TTFT by student version",
                                      ["student_version"], buckets=LATENCY_BUCKETS, registry=r)
        # the drift sample (gateway.shadow.capture): requests drawn before routing, measured on the student's whole
        # answer whatever route they took; only it feeds these, by the version that answered, so versions compare
        # on the same traffic (a better student serving more of the hard traffic does not look worse)
        self.drift_kl = Histogram("kdgate_drift_kl", "Mean per-token KL(teacher||student) of the student's whole "
                                  "answer to a request of the uniform drift sample, by student version",
                                  ["student_version"], buckets=KL_BUCKETS, registry=r)
        self.drift_top1 = Histogram("kdgate_drift_top1_agreement", "Share of the tokens of a drift-sample answer "
                                    "that are the teacher's top-1, by student version", ["student_version"],
                                    buckets=SHARE_BUCKETS, registry=r)
        self.drift_answers = Counter("kdgate_drift_answers", "Drift-sample answers by student version and whether "
                                     "the student's final answer equals the teacher's", ["student_version", "agree"],
                                     registry=r)
        self.drift_missed = Counter("kdgate_drift_missed", "Drift-sample escalations whose whole student answer "
                                    "could not be had, by reason (version_gone: the version stopped serving first; "
                                    "student_error; no_student)", ["reason"], registry=r)
        self.student_serving = Gauge("kdgate_student_serving", "1 for each student version serving now, by role "
                                     "(active, canary)", ["student_version", "role"],
                                     multiprocess_mode="livemostrecent", registry=r)
        self.student_revision = Gauge("kdgate_student_slot_revision", "The student slot revision this process "
                                      "serves (every promotion or rollback adds one)",
                                      multiprocess_mode="livemin", registry=r)
        self.student_promotions = Counter("kdgate_student_promotions", "Promotions by kind (full, canary) and how "
                                          "(manual, automatic)", ["kind", "how"], registry=r)
        self.student_rollbacks = Counter("kdgate_student_rollbacks", "Rollbacks by how (manual, automatic)",
                                         ["how"], registry=r)
        self._student_labels: dict[str, str] = {}  # version -> role, of the label children that exist


    def count_student_request(self, version: str, ok: bool, escalated: bool, ttft: float | None) -> None:
        """Counted under its version while that version serves; a request that finishes after its version stopped
        serving (a rejected canary's last streams) would bring the removed series back for good, so it is not."""
        if version not in self._student_labels:
            return
        self.student_requests.labels(version, "ok" if ok else "error").inc()
        if escalated:
            self.student_escalations.labels(version).inc()
        if ttft is not None:
            self.student_ttft.labels(version).observe(ttft)

    def observe_drift(self, version: str | None, kl: float | None, top1: float | None, agree: bool | None) -> None:
        """A drift-sample answer's figures under the version that answered, while it serves (shadow work finishes
        late; a removed version's series must not come back). KL and top-1 are None when the positions could not
        be paired, agreement when the answers cannot be compared."""
        if version not in self._student_labels:
            return
        if kl is not None:
            self.drift_kl.labels(version).observe(kl)
        if top1 is not None:
            self.drift_top1.labels(version).observe(top1)
        if agree is not None:
            self.drift_answers.labels(version, str(agree).lower()).inc()

    def student_serving_changed(self, serving: dict[str, str], revision: int) -> None:
        """The versions serving now (version -> role); the label children of the others are removed, so the
        `student_version` label stays bounded by what serves."""
        for version, role in self._student_labels.items():
            if serving.get(version) != role:
                self.student_serving.remove(version, role)
            if version not in serving:
                for family in (self.student_escalations, self.student_ttft, self.drift_kl, self.drift_top1):
                    _remove(family, version)
                for outcome in ("ok", "error"):
                    _remove(self.student_requests, version, outcome)
                for agree in ("true", "false"):
                    _remove(self.drift_answers, version, agree)
        for version, role in serving.items():
            self.student_serving.labels(version, role).set(1)
        self._student_labels = dict(serving)
        self.student_revision.set(revision)

    def count_fallback(self, reason: str, failed_backend: str, error: Exception) -> None:
        """One backend failed and the other served: the failure is counted against the one that failed."""
        self.fallbacks.labels(reason).inc()
        self.errors.labels(failed_backend, type(error).__name__).inc()


def _remove(family, *labels: str) -> None:
    try:
        family.remove(*labels)
    except KeyError:  # never observed
        pass


class EngineCollector(Collector):
    """Local engines' batch state, read at scrape time (nothing is added to the decode loop)."""

    def __init__(self, engines):
        self.engines = engines  # () -> {backend name: LocalEngine}, read at each scrape

    def collect(self):
        running = GaugeMetricFamily("kdgate_engine_running", "Sequences in the running batch", labels=["backend"])
        waiting = GaugeMetricFamily("kdgate_engine_waiting", "Requests waiting for a batch row", labels=["backend"])
        steps = CounterMetricFamily("kdgate_engine_decode_steps", "Batched decode steps", labels=["backend"])
        tokens = CounterMetricFamily("kdgate_engine_decoded_tokens", "Tokens decoded in batched steps "
                                     "(divided by decode steps: the mean batch size)", labels=["backend"])
        for name, engine in self.engines().items():
            stats = engine.stats()
            running.add_metric([name], stats["running"])
            waiting.add_metric([name], stats["waiting"])
            steps.add_metric([name], stats["steps"])
            tokens.add_metric([name], stats["decoded_tokens"])
        yield from (running, waiting, steps, tokens)
