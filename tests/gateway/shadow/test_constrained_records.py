"""Constrained requests through the real gateway and the real demo engines: each record keeps the client's
constraint, the teacher's own answer is asked under it, and the record's figures are the masked teacher's.

None of this needs the engines to honour the grammar (the local engine's grammar support lands separately): the
demo student writes its JSON answer unconstrained, which the masked figures are checked against either way (an
answer outside the language is recorded as scored unmasked), and what the teacher was asked is read from its
requests, not from its answer. The teacher backend is wrapped in a recorder for that: a measuring instrument
around the real one, which still does all the work."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from distill.demo.task import ANSWER_SCHEMA, take
from gateway.settings import RoutingSettings
from gateway.shadow.divergence import divergence
from gateway.shadow.jobs import ShadowJob
from gateway.shadow.masking import scores_under
from gateway.shadow.worker import compiled, teacher_request
from router.policy import RouteDecision
from router.policy_file import Calibration, PolicyFile, save_policy
from router.scorers import SignalScorer
from runtime.constraints.automaton import NotInLanguage
from runtime.constraints.languages import constraint
from runtime.store.records import tokens_from_json
from tests.conftest import ThreadedServer, gateway_settings
from tests.gateway.shadow.test_worker import shadow_settings, wait_for

TRIAGE = {"type": "json_schema", "json_schema": {"name": "triage", "schema": ANSWER_SCHEMA, "strict": True}}
GRAMMAR = 'root ::= "order " [0-9] [0-9] [0-9] [0-9] [0-9] " " ("billing" | "repairs" | "returns")'


class RecordingBackend:
    """The real backend, with every generation request it is sent kept for the test to read."""

    def __init__(self, backend):
        self.backend, self.requests = backend, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def generate(self, request):
        self.requests.append(request)
        return self.backend.generate(request)


def answered(server, extra: dict) -> tuple[str, str]:
    """(request id, answer) of one non-streamed demo request."""
    body = {"messages": take("test", 1, seed=9)[0].messages(), "max_tokens": 120, "temperature": 0} | extra
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()["id"].removeprefix("chatcmpl-"), reply.json()["choices"][0]["message"]["content"]


def record_of(store, request_id: str, kind: str = "shadow"):
    return wait_for(lambda: next((item for item in store.iter_records(kind=kind) if item.request_id == request_id),
                                 None), timeout=120)


def answer_requests(teacher: RecordingBackend, since: int = 0) -> list:
    """The requests for the teacher's own answers after the first `since` requests (its scoring of the student's
    answer is a prompt_logprobs request)."""
    return [request for request in teacher.requests[since:] if request.prompt_logprobs is None]


def test_the_teachers_answer_is_asked_under_the_jobs_constraint():
    job = ShadowJob(request_id="r", kind="shadow", messages=({"role": "user", "content": "hi"},),
                    student_answer="billing", student_tokens=(), decision=RouteDecision("student", "policy"),
                    student_model="s", max_tokens=16, created_at=datetime.now(UTC), constraint={"choice": ["billing"]})
    language = compiled(job.constraint)
    asked = teacher_request(job, list(job.messages), language, top_logprobs=5)
    assert asked.structured_outputs == language.structured_outputs and asked.constraint is language
    assert asked.sampling.temperature == 0.0 and asked.sampling.top_logprobs == 5 and asked.token_ids
    assert teacher_request(job, list(job.messages), None, 5).structured_outputs is None  # free text stays free


def test_a_constraint_that_no_longer_compiles_is_passed_on_and_scored_unmasked():
    spec = {"json": {"type": "integer", "minimum": 3}}  # refused (numeric bounds): as if an upgrade refused it
    language = compiled(spec)
    assert language.automaton is None and language.structured_outputs == spec


@pytest.fixture(scope="module")
def shadowing(demo_dirs, engine_server, tmp_path_factory):
    """A gateway that shadows every answer of the student (which serves them all), its teacher recorded."""
    from gateway.app import create_app

    settings = gateway_settings(demo_dirs, engine_server, routing=RoutingSettings(policy="student_only"),
                                shadow=shadow_settings(tmp_path_factory.mktemp("constrained")))
    with ThreadedServer(create_app(settings)) as server:
        worker = server.app.state.chat.shadow
        worker.teacher = RecordingBackend(worker.teacher)
        yield server


def test_a_schema_constrained_answer_is_recorded_with_its_constraint_and_masked_figures(shadowing):
    worker = shadowing.app.state.chat.shadow
    before = len(worker.teacher.requests)
    request_id, answer = answered(shadowing, {"response_format": TRIAGE})
    record = record_of(worker.store, request_id)
    spec = {"json": ANSWER_SCHEMA}
    language = constraint(spec)
    assert record.constraint == spec and record.student_answer == answer
    (asked,) = answer_requests(worker.teacher, before)
    assert asked.structured_outputs == language.structured_outputs and asked.constraint.spec == spec

    try:  # the demo student answers in JSON without a grammar; masking needs its answer to stay in the language
        language.automaton.walk(answer)
        in_language = True
    except NotInLanguage:
        in_language = False
    assert record.constraint_masked is in_language
    student, scored = tokens_from_json(record.student_tokens), tokens_from_json(record.teacher_scores)
    compared, masked = scores_under(language, scored, answer)
    figures = divergence(student, compared, answer, record.teacher_answer)
    assert masked is record.constraint_masked and record.aligned == figures.aligned
    assert record.mean_kl == pytest.approx(figures.mean_kl, abs=1e-9)  # the record's figures are the masked ones
    assert record.top1_agreement == pytest.approx(figures.top1_agreement)
    assert record.teacher_nll == pytest.approx(figures.teacher_nll, rel=1e-6)
    unmasked = divergence(student, scored, answer, record.teacher_answer)
    assert record.teacher_nll <= unmasked.teacher_nll + 1e-9  # renormalizing over less never lowers a probability


def test_a_clients_grammar_is_recorded_and_asked_of_the_teacher_but_scored_unmasked(shadowing):
    worker = shadowing.app.state.chat.shadow
    before = len(worker.teacher.requests)
    request_id, _ = answered(shadowing, {"structured_outputs": {"grammar": GRAMMAR}})
    record = record_of(worker.store, request_id)
    assert record.constraint == {"grammar": GRAMMAR}
    assert record.constraint_masked is False  # no automaton to mask with: said, not hidden
    (asked,) = answer_requests(worker.teacher, before)
    assert asked.structured_outputs == {"grammar": GRAMMAR}


def test_a_free_text_answer_has_no_constraint(shadowing):
    request_id, _ = answered(shadowing, {})
    record = record_of(shadowing.app.state.chat.shadow.store, request_id)
    assert (record.constraint, record.constraint_masked) == (None, None) and record.mean_kl is not None


def test_an_escalated_constrained_request_is_recorded_with_its_constraint(demo_dirs, engine_server, tmp_path):
    from gateway.app import create_app

    save_policy(PolicyFile(prefix_tokens=4, scorer=SignalScorer("min_prob"), threshold=2.0,  # escalates all
                           calibration=Calibration(data="test", examples=1, target_teacher_fraction=1.0,
                                                   realised_teacher_fraction=1.0)), tmp_path / "policy.json")
    settings = gateway_settings(demo_dirs, engine_server,
                                routing=RoutingSettings(policy="confidence", policy_file=tmp_path / "policy.json"),
                                shadow=shadow_settings(tmp_path, sample_rate=0.0))
    with ThreadedServer(create_app(settings)) as server:
        worker = server.app.state.chat.shadow
        worker.teacher = RecordingBackend(worker.teacher)
        request_id, answer = answered(server, {"response_format": TRIAGE})
        record = record_of(worker.store, request_id, kind="escalation")
    assert record.route == "teacher" and record.constraint == {"json": ANSWER_SCHEMA}
    assert record.constraint_masked is None  # nothing was scored: the student did not finish
    (asked,) = answer_requests(worker.teacher)
    assert asked.structured_outputs == constraint({"json": ANSWER_SCHEMA}).structured_outputs


LOOKUP = {"type": "function", "function": {"name": "lookup_order", "parameters": {
    "type": "object", "properties": {"order_number": {"type": "string", "pattern": "^[0-9]{5}$"}},
    "required": ["order_number"], "additionalProperties": False}}}


def test_a_tool_call_is_recorded_with_its_tools_and_the_teacher_asked_and_scored_with_them(shadowing):
    """The record keeps the tools and the choice (the call's language, compiled again by the worker); the teacher's
    answer and its scoring of the student's see the tools the student saw, and the figures are masked."""
    worker = shadowing.app.state.chat.shadow
    before = len(worker.teacher.requests)
    request_id, _ = answered(shadowing, {"tools": [LOOKUP], "tool_choice": "required",
                                         "parallel_tool_calls": False})
    record = record_of(worker.store, request_id)
    assert record.constraint["tools"] == [LOOKUP] and record.constraint["tool_choice"] == "required"
    assert record.student_answer.startswith("<tool_call>") and record.constraint_masked is True
    language = compiled(record.constraint)
    assert language.accepts(record.student_answer) and language.accepts(record.teacher_answer)
    (answer_request,) = answer_requests(worker.teacher, before)
    assert answer_request.structured_outputs == language.structured_outputs and answer_request.tools == (LOOKUP,)


async def test_the_teachers_scoring_of_an_answer_renders_its_tools(engine_server):
    from runtime.backends.http import HttpBackend
    from runtime.backends.scoring import score_answer
    from runtime.contract import BackendInfo

    call = '<tool_call>\n{"name": "lookup_order", "arguments": {"order_number": "12345"}}\n</tool_call>'
    async with httpx.AsyncClient(timeout=60) as client:
        teacher = RecordingBackend(HttpBackend(BackendInfo("teacher", engine_server.model, "http"),
                                               engine_server.base_url, client))
        scored = await score_answer(teacher, [{"role": "user", "content": "Where is order 12345?"}], call, 5,
                                    (LOOKUP,))
    assert [request.tools for request in teacher.requests] == [(LOOKUP,)] and scored.tokens
