"""The gate's figures on tool conversations: a golden example that offers tools is rendered with them, and a
reference that is a call matches the same call (names and arguments as JSON), as `kdgate router eval --tools`
judges it. They were rendered without the tools, so a tool-calling student was judged on prompts it never sees in
service (and answered them without calling), and a call written with other spacing did not match."""

from __future__ import annotations

import json

import pytest

from distill.demo import tools as demo_tools
from distill.online.evaluate import GoldenExample, figures, matches, read_golden
from runtime.demo import DEMO_TOOLS_DIR


def test_a_call_matches_the_same_call_however_it_is_spaced():
    reference = demo_tools.format_call("lookup_order", {"order_number": "12345"})
    respaced = '<tool_call>\n{"arguments": {"order_number":"12345"}, "name": "lookup_order"}\n</tool_call>'
    assert matches(respaced, reference) and matches(reference, reference)
    assert not matches(demo_tools.format_call("lookup_order", {"order_number": "12346"}), reference)
    assert not matches("I will look it up.", reference)
    assert matches('{"a": 1}', '{"a": 1}') and not matches('{"a":1}', '{"a": 1}')  # plain answers: exact text


def test_a_golden_line_keeps_its_tools(tmp_path):
    path = tmp_path / "golden.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "reference": "x", "slice": "s",
                                "tools": list(demo_tools.TOOLS)}) + "\n")
    (example,) = read_golden(path)
    assert example.tools == list(demo_tools.TOOLS)


@pytest.mark.slow
def test_the_tools_teacher_is_judged_on_its_calls_with_the_tools_rendered():
    """The tools demo's teacher writes the call on 99 % of held-out call turns (docs/demo.md): judged with the
    tools in its prompt it scores so here; without them (the old rendering) it answered without calling."""
    conversations = demo_tools.take("test", 24, seed=7)
    golden = [GoldenExample(*conversation.call_turn(), slice="call", tools=list(demo_tools.TOOLS))
              for conversation in conversations]
    golden += [GoldenExample(conversation.ticket.messages(), conversation.ticket.answer_json(), slice="plain")
               for conversation in conversations[:8]]
    result = figures(DEMO_TOOLS_DIR / "teacher", golden, heldout=[], batch_size=16)["golden"]
    assert result["by_slice"]["call"] >= 0.9 and result["slice_sizes"] == {"call": 24, "plain": 8}
    assert result["valid"] >= 0.9
