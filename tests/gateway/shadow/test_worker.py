"""Shadow work through the real gateway and the real demo engines: records with divergence, escalation records,
and faults (a hung teacher, a broken store) that cost shadow records but never a client request."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from gateway.settings import BackendSettings, GatewaySettings, RoutingSettings, ShadowSettings
from router.policy_file import Calibration, PolicyFile, save_policy
from router.scorers import SignalScorer
from tests.conftest import ThreadedServer, free_port, gateway_settings, start_engine_server, stop

TICKET = ("Hi, my SmartHub Pro from order 48213 will not turn on. Mail me at maria@example.com. "
          "We are an Enterprise customer. Thanks, Maria")


def metrics(server) -> dict[str, float]:
    return {sample.name + str(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
            for sample in family.samples}


def ask(server, **extra) -> str:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
    completion = client.chat.completions.create(model="kdgate-demo", temperature=0, max_tokens=64,
                                                messages=[{"role": "user", "content": TICKET}], **extra)
    return completion.choices[0].message.content


def wait_for(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def shadow_settings(tmp_path, **extra) -> ShadowSettings:
    return ShadowSettings(**({"enabled": True, "sample_rate": 1.0, "store_url": f"sqlite:///{tmp_path}/shadow.sqlite3"}
                             | extra))


def test_a_shadowed_answer_is_scored_stored_and_measured(demo_dirs, engine_server, tmp_path):
    from gateway.app import create_app

    settings = gateway_settings(demo_dirs, engine_server, shadow=shadow_settings(tmp_path))
    with ThreadedServer(create_app(settings)) as server:
        answer = ask(server, stream=False)
        store = server.app.state.chat.shadow.store
        record = wait_for(lambda: next(iter(store.iter_records()), None))
        figures = metrics(server)
    assert record.kind == "shadow" and record.route == "student" and record.student_answer == answer
    assert record.sample_rate == 1.0 and record.weight() == 1.0
    assert "[EMAIL]" in record.prompt[0]["content"] and "maria@example.com" not in record.prompt[0]["content"]
    assert "48213" in record.prompt[0]["content"]  # what training needs is kept
    assert len(record.student_tokens) >= 1 and len(record.student_tokens[0]["top"]) == 5
    assert record.aligned  # teacher scores cover the answer's text; the student's end token is the one extra
    assert len(record.teacher_scores) == len(record.student_tokens) - 1 == len(record.student_tokens[:-1])
    assert [token["token"] for token in record.teacher_scores] == [t["token"] for t in record.student_tokens[:-1]]
    assert record.mean_kl >= 0
    assert_figures_match_the_token_lists(record)
    assert record.teacher_answer and record.answers_agree == (record.student_answer == record.teacher_answer)
    assert record.field_agreement is not None and record.teacher_model == "demo-teacher"
    assert figures["kdgate_shadow_sampled_total[('kind', 'shadow')]"] == 1
    assert figures["kdgate_shadow_kl_count[]"] == 1 and figures["kdgate_shadow_store_write_seconds_count[]"] == 1
    assert figures["kdgate_shadow_kl_rolling[]"] == pytest.approx(record.mean_kl)
    # drawn before routing, it is in the uniform drift sample too: measured on the answer it served
    assert record.drift_sample and record.drift_answer is None
    assert figures["kdgate_drift_kl_sum[('student_version', 'initial')]"] == pytest.approx(record.mean_kl)
    assert_trainable(record)


def assert_figures_match_the_token_lists(record) -> None:
    """The record's top-1 agreement and teacher NLL, recomputed here from its own token lists: at each scored
    position the teacher's most likely token (among its reported top and the scored token itself) is the student's
    token or not, and the NLL is the mean of minus the teacher's logprob of the student's tokens."""
    scores = record.teacher_scores
    assert scores, "no teacher scores to recompute the figures from"
    agree = [max([*token["top"], [token["token"], token["logprob"], token["id"]]], key=lambda top: top[1])[2]
             == token["id"] for token in scores]
    assert record.top1_agreement == pytest.approx(sum(agree) / len(agree), abs=1e-9)
    assert record.teacher_nll == pytest.approx(-sum(token["logprob"] for token in scores) / len(scores), rel=1e-6)


def test_the_figure_check_fails_when_agreement_or_nll_were_computed_wrongly():
    """The check above can fail: a record whose agreement counts the teacher's least likely token as its top-1, or
    whose NLL is the mean logprob without its sign, is caught."""
    from types import SimpleNamespace

    scores = [{"token": "a", "id": 1, "logprob": -0.1, "top": [["a", -0.1, 1], ["b", -2.5, 2]]},
              {"token": "c", "id": 3, "logprob": -1.7, "top": [["d", -0.3, 4], ["c", -1.7, 3]]},
              {"token": "e", "id": 5, "logprob": -0.05, "top": [["e", -0.05, 5], ["f", -3.2, 6]]}]
    right = SimpleNamespace(teacher_scores=scores, top1_agreement=2 / 3, teacher_nll=(0.1 + 1.7 + 0.05) / 3)
    assert_figures_match_the_token_lists(right)  # worked out by hand: positions 0 and 2 agree
    argmin_agreement = SimpleNamespace(**vars(right) | {"top1_agreement": 1 / 3})  # position 1 only
    with pytest.raises(AssertionError):
        assert_figures_match_the_token_lists(argmin_agreement)
    unsigned_nll = SimpleNamespace(**vars(right) | {"teacher_nll": -right.teacher_nll})
    with pytest.raises(AssertionError):
        assert_figures_match_the_token_lists(unsigned_nll)


END = "<|end|>"  # the demo tokenizer's end token: its text, as vLLM and the engine report it, is not the answer's


def spelled(tokens: list[dict]) -> str:
    """The answer a record's token list spells (an end token ends it)."""
    return "".join(token["token"] for token in tokens).removesuffix(END)


def assert_trainable(record) -> None:
    """What a trainer needs without re-tokenizing: ids for every token on both sides, and the student version."""
    assert record.token_ids and record.student_version == "initial"
    for tokens in (record.student_tokens, record.teacher_scores, record.teacher_tokens):
        assert all(isinstance(token["id"], int) for token in tokens)
        assert all(len(top) == 3 and isinstance(top[2], int) for token in tokens for top in token["top"])
    assert [token["id"] for token in record.teacher_scores] == [token["id"] for token in record.student_tokens[:-1]]
    assert spelled(record.teacher_tokens) == record.teacher_answer


def test_an_http_student_reports_token_ids_for_the_record(demo_dirs, engine_server, tmp_path):
    """vLLM (here `kdgate engine`) gives ids only as `token_id:<id>` tokens: asked for them when the client wants no
    logprobs of its own, the record gets ids, and the texts still spell the answer."""
    from gateway.app import create_app
    from gateway.settings import BackendSettings

    student = BackendSettings(kind="http", base_url=engine_server.base_url, model=engine_server.model)
    settings = gateway_settings(demo_dirs, engine_server, shadow=shadow_settings(tmp_path)).model_copy(
        update={"student": student})
    with ThreadedServer(create_app(settings)) as server:
        answer = ask(server)
        record = wait_for(lambda: next(iter(server.app.state.chat.shadow.store.iter_records()), None))
    assert record.student_answer == answer and record.aligned
    assert spelled(record.student_tokens) == answer
    assert_trainable(record)


def test_streamed_and_escalated_requests_are_recorded_as_escalations(demo_dirs, engine_server, tmp_path):
    from gateway.app import create_app

    save_policy(PolicyFile(prefix_tokens=4, scorer=SignalScorer("min_prob"), threshold=2.0,  # escalates all
                           calibration=Calibration(data="test", examples=1, target_teacher_fraction=1.0,
                                                   realised_teacher_fraction=1.0)), tmp_path / "policy.json")
    settings = gateway_settings(demo_dirs, engine_server,
                                routing=RoutingSettings(policy="confidence", policy_file=tmp_path / "policy.json"),
                                shadow=shadow_settings(tmp_path, sample_rate=0.0))
    with ThreadedServer(create_app(settings)) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="kdgate-demo", temperature=0, max_tokens=64, stream=True,
            messages=[{"role": "user", "content": TICKET}]) if chunk.choices)
        store = server.app.state.chat.shadow.store
        record = wait_for(lambda: next(iter(store.iter_records(kind="escalation")), None))
        exported = httpx.get(f"{server.url}/metrics").text
    assert record.route == "teacher" and record.route_reason == "confidence:low" and record.threshold == 2.0
    assert len(record.student_tokens) == 4  # the held-back tokens the client never saw
    assert record.student_answer == "".join(token["token"] for token in record.student_tokens)
    assert record.teacher_answer == streamed and record.mean_kl is None
    assert record.sample_rate == 1.0  # every escalation is kept, whatever the shadow sample rate (here 0)
    assert record.drift_sample is False and record.drift_answer is None and record.teacher_scores is None
    assert "kdgate_drift_kl_count" not in exported  # not drawn before routing: not measured


def test_a_hung_teacher_costs_shadow_work_never_client_requests(demo_dirs, tmp_path):
    """The teacher process is frozen (SIGSTOP): client requests served by the student stay fast and succeed."""
    from gateway.app import create_app

    teacher = start_engine_server(demo_dirs[0], "frozen-teacher")
    try:
        settings = GatewaySettings(
            student=BackendSettings(kind="local", model_dir=demo_dirs[0], model="demo-student", threads=1),
            teacher=BackendSettings(kind="http", base_url=teacher.base_url, model=teacher.model),
            shadow=shadow_settings(tmp_path, timeout_s=1.0, queue_size=2, concurrency=1))
        with ThreadedServer(create_app(settings)) as server:
            os.kill(teacher.process.pid, signal.SIGSTOP)
            try:
                for _ in range(8):
                    started = time.monotonic()
                    assert ask(server)
                    assert time.monotonic() - started < 10
                figures = wait_for(lambda: (m := metrics(server)).get(
                    "kdgate_shadow_failed_total[('stage', 'timeout')]", 0) >= 1 and m)
            finally:
                os.kill(teacher.process.pid, signal.SIGCONT)
    finally:
        stop(teacher.process)
    assert figures["kdgate_shadow_dropped_total[('reason', 'queue_full')]"] >= 1
    assert figures["kdgate_requests_total[('outcome', 'ok'), ('route', 'student'), ('stream', 'false')]"] == 8


def test_a_broken_store_retries_its_job_then_drops_it_with_a_counter(demo_dirs, engine_server, tmp_path):
    """A write that keeps failing (the table is gone) is retried with backoff until the job is older than
    `shadow.retry_for_s`, then dropped and counted as a store error."""
    from gateway.app import create_app

    settings = gateway_settings(demo_dirs, engine_server, shadow=shadow_settings(tmp_path, retry_for_s=3.0))
    with ThreadedServer(create_app(settings)) as server:
        with server.app.state.chat.shadow.store.engine.begin() as connection:
            connection.execute(text("DROP TABLE shadow_records"))  # the store breaks under the running gateway
        assert ask(server)
        figures = wait_for(lambda: (m := metrics(server)).get("kdgate_shadow_dropped_total[('reason', 'store_error')]")
                           and m)
    assert figures["kdgate_shadow_dropped_total[('reason', 'store_error')]"] == 1


def test_an_unreachable_store_at_startup_still_serves(demo_dirs, engine_server, tmp_path):
    from gateway.app import create_app

    (tmp_path / "not-a-dir").write_text("a file where the store's folder should be")
    settings = gateway_settings(demo_dirs, engine_server, shadow=ShadowSettings(
        enabled=True, sample_rate=1.0, store_url=f"sqlite:///{tmp_path}/not-a-dir/shadow.sqlite3"))
    with ThreadedServer(create_app(settings)) as server:
        assert ask(server)
        figures = wait_for(lambda: (m := metrics(server)).get(
            "kdgate_shadow_dropped_total[('reason', 'store_unavailable')]") and m)
    assert figures["kdgate_shadow_kl_count[]"] == 1  # divergence still reaches the metrics


def test_a_store_that_comes_back_is_opened(demo_dirs, engine_server, tmp_path, monkeypatch):
    """The store's folder is blocked by a file at start; once the file is gone the worker opens the store and
    records are written again."""
    import gateway.shadow.worker as worker
    from gateway.app import create_app

    monkeypatch.setattr(worker, "REOPEN_EVERY_S", 0.3)
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store's folder should be")
    settings = gateway_settings(demo_dirs, engine_server, shadow=ShadowSettings(
        enabled=True, sample_rate=1.0, store_url=f"sqlite:///{blocker}/shadow.sqlite3"))
    with ThreadedServer(create_app(settings)) as server:
        assert ask(server)
        wait_for(lambda: metrics(server).get("kdgate_shadow_dropped_total[('reason', 'store_unavailable')]"))
        blocker.unlink()
        shadow = server.app.state.chat.shadow
        wait_for(lambda: shadow.store is not None)
        assert ask(server)
        record = wait_for(lambda: next(iter(shadow.store.iter_records()), None))
    assert record.kind == "shadow"


def test_a_student_failure_the_teacher_covered_is_recorded_as_an_escalation(demo_dirs, engine_server, tmp_path):
    """`student_error` is one of the route reasons the store keeps (one enum, router.reasons): the teacher's answer
    to a request the student failed is a hard example too."""
    from gateway.app import create_app
    from gateway.settings import BackendSettings

    student = BackendSettings(kind="http", base_url=f"http://127.0.0.1:{free_port()}/v1", model="gone")
    settings = gateway_settings(demo_dirs, engine_server, shadow=shadow_settings(tmp_path, sample_rate=0.0)
                                ).model_copy(update={"student": student})
    with ThreadedServer(create_app(settings)) as server:
        reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": TICKET}], "max_tokens": 16})
        assert reply.headers["x-kdgate-route-reason"] == "student_error"
        record = wait_for(lambda: next(iter(server.app.state.chat.shadow.store.iter_records(kind="escalation")),
                                       None))
    assert record.route_reason == "student_error" and record.student_answer == ""
    assert record.teacher_answer == reply.json()["choices"][0]["message"]["content"]
