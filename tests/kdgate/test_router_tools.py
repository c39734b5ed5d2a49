"""Routing records of the demo's tool task: the call turn answered under the gateway's language of text or calls,
judged by tool-call exact match, and handed off mid-call in the evaluation with the calls kept well-formed."""

from __future__ import annotations

import asyncio
import json

from distill.demo import tools
from kdgate.routing.collect import collect_from_settings, greedy, is_right
from kdgate.routing.handoff_eval import evaluate_handoff
from runtime.backends.factory import open_backends

CALL = tools.format_call("lookup_order", {"order_number": "36010"})


def test_a_call_is_right_when_its_name_and_arguments_are():
    offered = list(tools.TOOLS)
    assert is_right(CALL.replace('"36010"', ' "36010"').replace(": ", ":"), CALL, offered)  # spacing aside
    assert not is_right(CALL.replace("36010", "36011"), CALL, offered)
    assert not is_right("I will look it up.", CALL, offered)
    assert not is_right(CALL, CALL.replace("36010", "11111"), offered)


def test_a_tool_record_asks_as_the_gateway_does():
    request = greedy("r", [{"role": "user", "content": "hi"}], 5, None, list(tools.TOOLS))
    assert request.tools == tools.TOOLS and request.constraint.accepts(CALL) and request.constraint.accepts("hi")
    assert not request.constraint.accepts(CALL.replace("36010", "x"))


def test_tool_records_from_the_demo_engines_and_their_handoffs(demo_dirs):
    """Whatever the models write under the language, each call in a record or a handed-off answer parses."""
    records = asyncio.run(collect_from_settings(None, "test", 6, seed=1, top_logprobs=5, threads=1,
                                                with_tools=True))
    assert all(record.tools == list(tools.TOOLS) and tools.parse_tool_calls(record.reference) for record in records)
    for record in records:
        for text in (record.student_text, record.teacher_text):
            assert "<tool_call>" not in text or tools.parse_tool_calls(text) is not None, text
    json.loads(records[0].to_json())

    async def replay():
        from gateway.settings import load_settings

        settings = load_settings(None)
        async with open_backends(settings.backends(), settings.http) as backends:
            return await evaluate_handoff(backends["teacher"], records, {}, min_probs=(0.999,))
    [row] = asyncio.run(replay())
    assert row["handoffs"] >= 1 and row["malformed_calls"] == 0, row
