"""Shadow records of an HTTP student that packs several tokens per stream chunk, as a busy vLLM does (here the
project's engine with vLLM's stream interval at 4, tests/vllm_servers.py): every record is aligned and has its KL,
at concurrency. The end token came packed with the answer's last tokens and took the chunk's whole text, so the
divergence could not leave it out: such records were stored unaligned, without KL, and out of the training data."""

from __future__ import annotations

import asyncio
import math

import pytest
from openai import AsyncOpenAI

from distill.demo import task
from gateway.settings import BackendSettings
from tests.conftest import ThreadedServer, gateway_settings
from tests.gateway.shadow.test_worker import shadow_settings, wait_for

CONCURRENCY = 8


async def ask_all(url: str, tickets: list[str]) -> list[str]:
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

    async def ask(ticket: str) -> str:
        stream = await client.chat.completions.create(model="kdgate-demo", temperature=0, max_tokens=200,
                                                      messages=[{"role": "user", "content": ticket}], stream=True)
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

    try:
        return await asyncio.gather(*(ask(ticket) for ticket in tickets))
    finally:
        await client.close()


def assert_aligned_with_kl(records, answers) -> None:
    unaligned = [record.student_answer[:60] for record in records if not record.aligned]
    assert not unaligned, f"{len(unaligned)} of {len(records)} records unaligned: {unaligned}"
    assert sorted(record.student_answer for record in records) == sorted(answers)
    for record in records:
        assert math.isfinite(record.mean_kl) and record.mean_kl >= 0
        assert len(record.teacher_scores) == len(record.student_tokens) - 1  # the end token is the one extra
        assert [token["id"] for token in record.teacher_scores] == [token["id"] for token in
                                                                    record.student_tokens[:-1]]
        assert "".join(token["token"] for token in record.student_tokens[:-1]) == record.student_answer


@pytest.mark.timeout(300)
def test_every_record_of_a_packing_student_is_aligned_at_concurrency(demo_dirs, engine_server, packed_engine,
                                                                     tmp_path):
    from gateway.app import create_app

    student = BackendSettings(kind="http", base_url=f"{packed_engine.url}/v1", model=packed_engine.served)
    settings = gateway_settings(demo_dirs, engine_server, shadow=shadow_settings(tmp_path)).model_copy(
        update={"student": student})
    tickets = [ticket.text for ticket in task.take("test", CONCURRENCY)]
    with ThreadedServer(create_app(settings)) as server:
        answers = asyncio.run(ask_all(server.url, tickets))
        store = server.app.state.chat.shadow.store
        records = wait_for(lambda: (found := list(store.iter_records())) and len(found) == len(tickets) and found,
                           timeout=120)
    assert_aligned_with_kl(records, answers)
