"""What serving hands the shadow worker: the student's side of one request, captured while it streams.

`plan` runs before routing: it samples the request for shadowing and, when sampled, asks the student for the
top-k logprobs the divergence needs (the client's own logprobs are formatted from its request, so it sees no
difference). `observe` sees every event the client gets; the student's part ends at a handoff. `finish` runs when
the answer is complete and offers the job: `shadow` for a sampled student answer, `escalation` for a request the
student did not finish (escalated on confidence, or handed off mid-stream).

The draw is made before routing, so the sampled requests are a uniform sample of the traffic the student starts,
whatever it then made of them: the *drift sample*. A sampled escalation is offered even when escalations are not
recorded, marked `drift`, and the worker measures the student's whole answer to it off the request path. Requests
a policy sends straight to the teacher (`random`, `teacher_only`) are left out: that choice does not look at the
student, so leaving them out favours no version.

A raw-prompt request (`POST /v1/completions`) is not shadowed nor recorded: a record keeps the conversation as chat
messages, and the teacher's scoring, the routing records and re-distillation read it through the chat template. It
is counted instead, as the job it would have been (`kdgate_shadow_skipped_total{reason="raw_prompt", kind}`).
"""

from __future__ import annotations

from dataclasses import replace

from gateway.fallback import RouteChange
from gateway.routing import with_logprobs
from gateway.shadow.worker import ShadowWorker, new_job
from router.policy import RouteDecision
from router.reasons import ESCALATIONS, Reason
from runtime.contract import Delta, GenerationRequest, TokenLogprob

RAW_PROMPT = "raw_prompt"  # the reason a completions request is not shadowed


class Capture:
    def __init__(self, worker: ShadowWorker | None, sampled: bool, skipped: str | None = None):
        self.worker = worker
        self.sampled = sampled
        self.skipped = skipped  # why this request's job is counted instead of offered
        self.text: list[str] = []
        self.tokens: list[TokenLogprob] = []
        self._student_part = True

    @classmethod
    def plan(cls, worker: ShadowWorker | None, generation: GenerationRequest, forced: str | None
             ) -> tuple[Capture, GenerationRequest]:
        sampled = worker is not None and forced is None and worker.wants()
        if worker is not None and generation.prompt is not None:
            return cls(worker, sampled, skipped=RAW_PROMPT), generation
        if worker is not None and generation.sampling.top_logprobs is None:
            # records keep token ids: an HTTP student then reports `token_id:<id>` tokens, which only a client that
            # asked for no logprobs of its own may be given
            generation = replace(generation, token_ids=True)
        if sampled:
            generation = with_logprobs(generation, worker.config.top_logprobs)
        return cls(worker, sampled), generation

    def observe(self, event) -> None:
        if isinstance(event, RouteChange):
            self._student_part = event.decision.route == "student"  # the student finishes when the teacher fails
        elif self._student_part and isinstance(event, Delta):
            self.text.append(event.text)
            self.tokens.extend(event.logprobs)

    def finish(self, generation: GenerationRequest, decision: RouteDecision, discarded: tuple[TokenLogprob, ...],
               student_model: str, student_version: str | None = None) -> None:
        """Offer the job, if there is one; never raises into the request."""
        if self.worker is None:
            return
        if decision.reason == Reason.TEACHER_UNAVAILABLE:  # nothing to compare with: the teacher is down
            return
        if decision.route == "student" and self.sampled:
            kind, text, tokens = "shadow", "".join(self.text), tuple(self.tokens)
        elif decision.reason in ESCALATIONS and (self.sampled or self.worker.config.record_escalations):
            student = tuple(self.tokens) if decision.reason == Reason.HANDOFF else discarded
            kind, text, tokens = "escalation", "".join(entry.token for entry in student), student
        else:
            return
        if self.skipped is not None:
            self.worker.metrics.shadow_skipped.labels(self.skipped, kind).inc()
            return
        self.worker.offer(new_job(kind, generation, text, tokens, decision, student_model, student_version,
                                  drift=self.sampled))
