"""Constrained shadow records against real vLLM, which does enforce the grammar (the local engine's support comes
separately): the student's answers are documents of the schema, every record keeps the constraint and is masked —
vLLM's `prompt_logprobs` token texts spell the answer, so each scored position can be placed in the language — and
the stored figures are the masked teacher's, recomputed here from the record's own token lists."""

from __future__ import annotations

import json

import httpx
import jsonschema_rs
import pytest

from distill.demo.task import ANSWER_SCHEMA, take
from gateway.app import create_app
from gateway.shadow.divergence import divergence
from gateway.shadow.masking import scores_under
from runtime.constraints.languages import constraint
from runtime.store.records import tokens_from_json
from tests.conftest import ThreadedServer
from tests.gateway.shadow.test_worker import wait_for
from tests.vllm.gateways import vllm_gateway_settings

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

TRIAGE = {"type": "json_schema", "json_schema": {"name": "triage", "schema": ANSWER_SCHEMA, "strict": True}}
REQUESTS = 4


def test_constrained_answers_are_recorded_masked_on_vllm(vllm_servers, tmp_path):
    settings = vllm_gateway_settings(vllm_servers, tmp_path / "shadow.sqlite3",
                                     routing={"handoff": {"enabled": False}})
    with ThreadedServer(create_app(settings)) as server:
        for ticket in take("test", REQUESTS, seed=3):
            reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
                "messages": ticket.messages(), "max_tokens": 120, "temperature": 0, "response_format": TRIAGE})
            assert reply.status_code == 200, reply.text
        store = server.app.state.chat.shadow.store
        records = wait_for(lambda: (found := list(store.iter_records())) and len(found) == REQUESTS and found,
                           timeout=300)
    language, validator = constraint({"json": ANSWER_SCHEMA}), jsonschema_rs.validator_for(ANSWER_SCHEMA)
    for record in records:
        assert record.kind == "shadow" and record.constraint == {"json": ANSWER_SCHEMA}
        assert validator.is_valid(json.loads(record.student_answer)), record.student_answer
        assert record.constraint_masked is True and record.aligned
        student, scored = tokens_from_json(record.student_tokens), tokens_from_json(record.teacher_scores)
        compared, masked = scores_under(language, scored, record.student_answer)
        figures = divergence(student, compared, record.student_answer, record.teacher_answer)
        assert masked is True and record.mean_kl == pytest.approx(figures.mean_kl, abs=1e-9)
        assert record.top1_agreement == pytest.approx(figures.top1_agreement)
        assert record.teacher_nll <= divergence(student, scored, record.student_answer, None).teacher_nll + 1e-9
