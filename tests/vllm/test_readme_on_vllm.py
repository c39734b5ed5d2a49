"""The README's quick start, through the gateway configured as deploy/kdgate-vllm.yaml, in front of real vLLM: the
same routes and answers as the embedded demo (the easy ticket from the student, the hard one handed off to the
teacher mid-answer), a stream through the official openai SDK, and a client that leaves aborting vLLM's request."""

from __future__ import annotations

import time

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from tests.conftest import ThreadedServer
from tests.gateway.test_disconnect import wait_for
from tests.kdgate.test_serve_defaults import held_out_ticket, quick_start_requests
from tests.vllm.gateways import vllm_gateway_settings

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]  # the first test waits for both servers to start


@pytest.fixture(scope="module")
def gateway(vllm_servers, tmp_path_factory):
    store = tmp_path_factory.mktemp("vllm-readme") / "shadow.sqlite3"
    with ThreadedServer(create_app(vllm_gateway_settings(vllm_servers, store))) as server:
        yield server


def test_the_easy_ticket_is_the_students_answer(gateway):
    body = quick_start_requests()[0]
    reply = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    assert (reply.headers["x-kdgate-route"], reply.headers["x-kdgate-route-reason"]) == \
        ("student", "policy:student_only")
    assert reply.json()["kdgate"]["model"] == "demo-student"
    assert reply.json()["choices"][0]["message"]["content"] == \
        held_out_ticket(body["messages"][0]["content"]).answer_json()


def test_the_hard_ticket_is_handed_off_to_the_teacher_mid_answer(gateway):
    body = quick_start_requests()[1]
    expected = held_out_ticket(body["messages"][0]["content"]).answer_json()
    reply = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    assert (reply.headers["x-kdgate-route"], reply.headers["x-kdgate-route-reason"]) == ("teacher", "handoff")
    assert reply.json()["kdgate"]["model"] == "demo-teacher"
    assert reply.json()["choices"][0]["message"]["content"] == expected
    alone = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers={"x-kdgate-force": "student"},
                       timeout=120)
    assert alone.json()["choices"][0]["message"]["content"] != expected  # hard: the student alone errs


def test_the_hard_ticket_streams_through_the_openai_sdk(gateway):
    """The README's streaming example: the student's part, then the teacher's continuation, as one answer; the last
    chunk names who finished it."""
    body = quick_start_requests()[1]
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120)
    chunks = list(client.chat.completions.create(model="kdgate-demo", messages=body["messages"], temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == held_out_ticket(body["messages"][0]["content"]).answer_json()
    assert chunks[0].choices[0].delta.role == "assistant"
    finished = [chunk.model_extra["kdgate"] for chunk in chunks if (chunk.model_extra or {}).get("kdgate")]
    assert finished[-1]["route"] == "teacher" and finished[-1]["reason"] == "handoff"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def vllm_counts(base_url: str) -> dict[str, float]:
    """vLLM's own figures: requests running now, tokens generated so far, requests finished by reason (vLLM counts
    an aborted request under none of them)."""
    families = text_string_to_metric_families(httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text)
    counts: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            if sample.name == "vllm:num_requests_running":
                counts["running"] = counts.get("running", 0.0) + sample.value
            elif sample.name == "vllm:generation_tokens_total":
                counts["generated"] = counts.get("generated", 0.0) + sample.value
            elif sample.name == "vllm:request_success_total":
                counts["finished"] = counts.get("finished", 0.0) + sample.value
    return counts


LONG = {"messages": [{"role": "user", "content": "Hello, my SmartHub Pro from order 48213 will not turn on."}],
        "max_tokens": 440, "ignore_eos": True, "stream": True}  # as long as the demo models' 512 positions allow


def leave_after_the_first_chunk(url: str, role: str) -> None:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=LONG, headers={"x-kdgate-force": role},
                      timeout=60) as response:
        assert response.status_code == 200
        next(response.iter_lines())
    # Leaving the `with` block closes the connection mid-stream.


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_a_client_that_leaves_aborts_the_request_on_vllm(gateway, vllm_servers, role):
    """A 440-token answer (`ignore_eos`) left after its first chunk: vLLM stops generating, on the route the client
    was on: nothing left running, and the request never finished (vLLM counts no aborted request as finished).
    The demo student makes 440 tokens in about a second, and a vLLM whose output lags packs many into one chunk, so
    an answer can be whole before the client has its first chunk: such a try proves nothing and is made again, up
    to six times (a CI run beside other work had three whole answers in three tries)."""
    server = getattr(vllm_servers, role)
    tries = []
    for _ in range(6):
        before = vllm_counts(server.base_url)
        leave_after_the_first_chunk(gateway.url, role)
        assert wait_for(lambda: vllm_counts(server.base_url)["running"] == 0.0, timeout=10), \
            f"vLLM's {role} kept generating after the client left: {vllm_counts(server.base_url)}"
        time.sleep(0.5)  # a request that went on would finish now
        after = vllm_counts(server.base_url)
        tries.append((after["finished"] - before["finished"], after["generated"] - before["generated"]))
        if tries[-1][0] == 0:
            break
    finished, generated = tries[-1]
    assert finished == 0, f"every try ran to its end instead of being aborted (finished, tokens): {tries}"
    assert generated < LONG["max_tokens"], tries
