"""Cost accounting (gateway/cost.py) on the real demo engines: what each way of serving an answer is charged, read
back from the gateway's /metrics, against the usage the client got and the prices configured."""

from __future__ import annotations

import math
import time

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.cost import Bill, Price, work
from gateway.fallback import RouteChange
from gateway.settings import HandoffSettings, RoutingSettings, ShadowSettings
from router.policy import RouteDecision
from router.reasons import Reason
from runtime.contract import Finish
from runtime.settings import CostSettings
from tests.conftest import ThreadedServer, gateway_settings
from tests.gateway.test_confidence_routing import ESCALATE, TICKET, write_policy

STUDENT_COST = CostSettings(prompt_per_million=1.0, completion_per_million=3.0)
# $36 a GPU-hour × 2 GPUs = $0.02 a second: $10 per million prompt tokens at 2,000/s, $40 per million completion
# tokens at 500/s
TEACHER_COST = CostSettings(gpu_hour=36.0, gpus=2, completion_tokens_per_s=500, prompt_tokens_per_s=2000)
STUDENT_PER_MILLION, TEACHER_PER_MILLION = (1.0, 3.0), (10.0, 40.0)  # (prompt, completion) dollars, as above
MIN_PROB = 0.9


def dollars(tokens: tuple[int, int], per_million: tuple[float, float]) -> float:
    """The expected charge, worked out here from the prices rather than by gateway.cost."""
    (prompt, completion), (prompt_price, completion_price) = tokens, per_million
    return (prompt * prompt_price + completion * completion_price) / 1e6


def priced(settings):
    return settings.model_copy(update={"student": settings.student.model_copy(update={"cost": STUDENT_COST}),
                                       "teacher": settings.teacher.model_copy(update={"cost": TEACHER_COST})})


def cost_samples(url: str) -> dict[tuple[str, ...], float]:
    """{(metric, route[, backend]): dollars} of the cost counters."""
    found = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name in ("kdgate_cost_dollars_total", "kdgate_cost_all_teacher_dollars_total"):
                found[(sample.name, sample.labels["route"], *([sample.labels["backend"]] if "backend" in
                                                               sample.labels else []))] = sample.value
    return found


def moved(before: dict, after: dict) -> dict:
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value != before.get(key, 0.0)}


SPENT, ALL_TEACHER = "kdgate_cost_dollars_total", "kdgate_cost_all_teacher_dollars_total"


# ------------------------------------------------------------------------------------------- the attribution itself


@pytest.mark.parametrize("handed_off, student, teacher", [
    (7, (50, 7), (57, 23)),
    (0, (50, 0), (50, 30)),  # handed off at the first token: the student read the prompt and sent nothing
    (30, (50, 30), (80, 0)),  # handed off at the last: the teacher read it all and wrote nothing
])
def test_a_handoff_splits_the_answer_between_the_two_backends(handed_off, student, teacher):
    """A 50-token prompt and a 30-token answer, `handed_off` of them the student's: the teacher's usage (what the
    client gets) shows the handed-off text in its prompt and the whole answer in its completion."""
    bill = Bill()
    bill.observe(RouteChange(RouteDecision("teacher", Reason.HANDOFF), backend=None, handed_off_tokens=handed_off))
    done = work(bill, "teacher", Finish("stop", prompt_tokens=50 + handed_off, completion_tokens=30))
    assert done.by_backend == {"student": student, "teacher": teacher}
    assert done.answer == (50, 30)  # the teacher alone: the original prompt, the whole answer


def test_an_escalation_pays_for_the_discarded_student_tokens_unless_the_teacher_failed():
    escalated = work(Bill(discarded=4), "teacher", Finish("stop", 50, 30))
    assert escalated.by_backend == {"student": (50, 4), "teacher": (50, 30)} and escalated.answer == (50, 30)
    bill = Bill(discarded=4)
    bill.observe(RouteChange(RouteDecision("student", Reason.TEACHER_UNAVAILABLE), backend=None))
    fell_back = work(bill, "student", Finish("stop", 50, 28))  # the held tokens were served after all
    assert fell_back.by_backend == {"student": (50, 28)}


def test_the_all_teacher_figure_of_a_teacher_answer_is_what_it_cost():
    done = work(Bill(), "teacher", Finish("stop", 50, 30))
    assert done.by_backend == {"teacher": (50, 30)} and done.answer == (50, 30)
    assert TEACHER_COST.per_million() == pytest.approx((10.0, 40.0))  # the GPU-hour price, converted as above
    assert STUDENT_COST.per_million() == (1.0, 3.0)
    teacher = Price.per_million(*TEACHER_COST.per_million())  # as the gateway prices it
    assert teacher.of(done.answer) == pytest.approx(50 * 10e-6 + 30 * 40e-6)  # $0.0017


# ------------------------------------------------------------------------------------------- on the real engines


@pytest.fixture(scope="module")
def priced_gateway(demo_dirs, engine_server):
    """Student first with mid-stream handoff; every handoff recorded by the shadow worker (metrics only)."""
    from gateway.app import create_app

    routing = RoutingSettings(policy="student_only", handoff=HandoffSettings(enabled=True, min_prob=MIN_PROB))
    shadow = ShadowSettings(enabled=True, sample_rate=0.0, record_escalations=True, store_url=None)
    settings = priced(gateway_settings(demo_dirs, engine_server, routing=routing, shadow=shadow))
    with ThreadedServer(create_app(settings)) as server:
        yield server


@pytest.fixture
def client(priced_gateway) -> OpenAI:
    return OpenAI(base_url=f"{priced_gateway.url}/v1", api_key="unused", max_retries=0)


def ask(client: OpenAI, stream: bool = False, force: str | None = None, **kwargs):
    """The answer's usage and its `kdgate` route object."""
    request = dict(model="kdgate-demo", messages=[{"role": "user", "content": TICKET}], temperature=0,
                   max_tokens=64, extra_headers={"x-kdgate-force": force} if force else None, **kwargs)
    if not stream:
        completion = client.chat.completions.create(**request)
        return completion.usage, completion.model_extra["kdgate"], completion
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request))
    return chunks[-1].usage, chunks[-1].model_extra["kdgate"], chunks


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_student_answer_costs_its_tokens_at_the_students_prices(priced_gateway, client, stream):
    before = cost_samples(priced_gateway.url)
    usage, route, _ = ask(client, stream=stream, force="student")
    assert route["route"] == "student"
    tokens = (usage.prompt_tokens, usage.completion_tokens)
    assert moved(before, cost_samples(priced_gateway.url)) == pytest.approx({
        (SPENT, "student", "student"): dollars(tokens, STUDENT_PER_MILLION),
        (ALL_TEACHER, "student"): dollars(tokens, TEACHER_PER_MILLION)})


def assert_charged_as_a_teacher_answer(spent: dict, usage) -> None:
    """Spent and all-teacher alike: the answer's tokens at the teacher's prices."""
    cost = dollars((usage.prompt_tokens, usage.completion_tokens), TEACHER_PER_MILLION)
    assert spent == pytest.approx({(SPENT, "teacher", "teacher"): cost, (ALL_TEACHER, "teacher"): cost})


def test_a_teacher_answer_costs_what_it_would_cost_all_teacher(priced_gateway, client):
    before = cost_samples(priced_gateway.url)
    usage, route, _ = ask(client, force="teacher")
    assert route["route"] == "teacher"
    assert_charged_as_a_teacher_answer(moved(before, cost_samples(priced_gateway.url)), usage)


def test_a_bill_at_the_students_prices_fails_the_teacher_charge_check(priced_gateway, client, monkeypatch):
    """Mutation check: a meter that charges the teacher's answer at the student's prices is caught."""
    meter = priced_gateway.app.state.chat.cost
    monkeypatch.setitem(meter.prices, "teacher", meter.prices["student"])
    before = cost_samples(priced_gateway.url)
    usage, _, _ = ask(client, force="teacher")
    with pytest.raises(AssertionError):
        assert_charged_as_a_teacher_answer(moved(before, cost_samples(priced_gateway.url)), usage)


def test_a_handed_off_answer_pays_for_both_parts_and_its_shadow_record(priced_gateway, client):
    student_usage, _, alone = ask(client, force="student", logprobs=True, top_logprobs=1)
    cut = next(index for index, entry in enumerate(alone.choices[0].logprobs.content)
               if entry.logprob < math.log(MIN_PROB))  # the student tokens the client gets before the teacher
    teacher_usage, _, _ = ask(client, force="teacher")
    before = cost_samples(priced_gateway.url)
    usage, route, _ = ask(client, stream=True)
    assert route["reason"] == "handoff"
    prompt = student_usage.prompt_tokens  # the original prompt, in the tokenizer both models share
    assert usage.prompt_tokens == prompt + cut  # the teacher read the prompt and the handed-off text
    spent = moved(before, cost_samples(priced_gateway.url))
    spent.pop((SPENT, "shadow", "teacher"), None)  # the escalation record may be written already: checked below
    assert spent == pytest.approx({
        (SPENT, "teacher", "student"): dollars((prompt, cut), STUDENT_PER_MILLION),
        (SPENT, "teacher", "teacher"): dollars((usage.prompt_tokens, usage.completion_tokens - cut),
                                               TEACHER_PER_MILLION),
        (ALL_TEACHER, "teacher"): dollars((prompt, usage.completion_tokens), TEACHER_PER_MILLION)})
    # Off the request path the shadow worker asks the teacher for its own answer to the escalated request: the
    # answer the forced teacher gave, at the teacher's prices, under route="shadow".
    deadline = time.monotonic() + 60
    while (shadow := moved(before, cost_samples(priced_gateway.url)).get((SPENT, "shadow", "teacher"))) is None:
        assert time.monotonic() < deadline, "the escalation's shadow work was never charged"
        time.sleep(0.2)
    assert shadow == pytest.approx(dollars((teacher_usage.prompt_tokens, teacher_usage.completion_tokens),
                                           TEACHER_PER_MILLION))


@pytest.fixture(scope="module")
def escalating_gateway(demo_dirs, engine_server, tmp_path_factory):
    """Confidence routing holding back 4 student tokens, from a policy file whose threshold no answer reaches:
    every request escalates to the teacher."""
    from gateway.app import create_app

    path = tmp_path_factory.mktemp("policy") / "policy.json"
    write_policy(path, prefix_tokens=4, threshold=ESCALATE)
    settings = priced(gateway_settings(demo_dirs, engine_server,
                                       routing=RoutingSettings(policy="confidence", policy_file=path)))
    with ThreadedServer(create_app(settings)) as server:
        yield server


def test_an_escalated_answer_pays_for_the_students_discarded_tokens(escalating_gateway):
    client = OpenAI(base_url=f"{escalating_gateway.url}/v1", api_key="unused", max_retries=0)
    before = cost_samples(escalating_gateway.url)
    usage, route, _ = ask(client)
    assert (route["route"], route["reason"]) == ("teacher", "confidence:low")
    tokens = (usage.prompt_tokens, usage.completion_tokens)
    assert moved(before, cost_samples(escalating_gateway.url)) == pytest.approx({
        (SPENT, "teacher", "student"): dollars((usage.prompt_tokens, 4), STUDENT_PER_MILLION),  # its 4 held back
        (SPENT, "teacher", "teacher"): dollars(tokens, TEACHER_PER_MILLION),
        (ALL_TEACHER, "teacher"): dollars(tokens, TEACHER_PER_MILLION)})


def test_without_prices_there_is_no_cost_series(gateway):
    httpx.post(f"{gateway.url}/v1/chat/completions", timeout=60, json={
        "model": "kdgate-demo", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert cost_samples(gateway.url) == {}
