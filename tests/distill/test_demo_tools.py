"""The tool-calling demo: TOOL_CHAT_TEMPLATE (a superset of CHAT_TEMPLATE), the `lookup_order` tool and its executor,
and the tool conversations the tools models learn from."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from distill.demo import DEMO_TEACHER_DIR, task, tools
from distill.demo.tokenizer import CHAT_TEMPLATE, TOOL_CHAT_TEMPLATE
from runtime.chat_template import render
from tests.conftest import ROOT

CALL = '<tool_call>\n{"name": "lookup_order", "arguments": {"order_number": "36010"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tokenizers():
    plain = AutoTokenizer.from_pretrained(str(DEMO_TEACHER_DIR))
    plain.chat_template = CHAT_TEMPLATE
    with_tools = AutoTokenizer.from_pretrained(str(DEMO_TEACHER_DIR))
    with_tools.chat_template = TOOL_CHAT_TEMPLATE
    return plain, with_tools


def call_message(*calls: tuple[str, str], content=None) -> dict:
    return {"role": "assistant", "content": content, "tool_calls": [
        {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for index, (name, arguments) in enumerate(calls)]}


def plain_conversations() -> list[list[dict]]:
    tickets = task.take("test", 20, seed=5)
    return [
        *[ticket.messages() for ticket in tickets],
        *[[*ticket.messages(), {"role": "assistant", "content": ticket.answer_json()}] for ticket in tickets[:5]],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello"}, {"role": "user", "content": [
             {"type": "text", "text": "part one, "}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "part two"}]}],
        [{"role": "user", "content": "écrire ✓ 中文"}, {"role": "assistant", "content": ""}],
    ]


@pytest.mark.parametrize("options", [{"add_generation_prompt": True}, {"add_generation_prompt": False}])
def test_a_conversation_without_tools_renders_byte_identically_to_the_plain_template(tokenizers, options):
    plain, with_tools = tokenizers
    for messages in plain_conversations():
        assert render(with_tools, messages, **options) == render(plain, messages, **options)
        assert render(with_tools, messages, tools=[], **options) == render(plain, messages, **options)
    for messages in plain_conversations():
        if messages[-1]["role"] == "assistant" and messages[-1]["content"]:
            assert (render(with_tools, messages, continue_final_message=True)
                    == render(plain, messages, continue_final_message=True))


def test_tools_render_as_one_compact_system_block_right_after_bos(tokenizers):
    _, with_tools = tokenizers
    offered = [tools.LOOKUP_ORDER,
               {"type": "function", "function": {"name": "ping"}},  # no parameters at all
               {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
               {"type": "function", "function": {"name": "move", "parameters": {
                   "type": "object", "properties": {"src": {"type": "string"}, "dst": {"type": "string"}}}}}]
    text = render(with_tools, [{"role": "user", "content": "Hi"}], offered, add_generation_prompt=True)
    assert text == ("<|bos|><|system|>Tools:\nlookup_order(order_number)\nping()\nnoop()\nmove(src, dst)<|end|>"
                    "<|user|>Hi<|end|><|assistant|>")


def test_tool_calls_and_tool_messages_render_hermes_style(tokenizers):
    _, with_tools = tokenizers
    arguments = json.dumps({"order_number": "36010"})
    one = render(with_tools, [{"role": "user", "content": "Hi"}, call_message(("lookup_order", arguments)),
                              {"role": "tool", "tool_call_id": "call_0", "content": '{"product": "NewsDaily"}'}],
                 [tools.LOOKUP_ORDER], add_generation_prompt=True)
    assert one == ("<|bos|><|system|>Tools:\nlookup_order(order_number)<|end|><|user|>Hi<|end|>"
                   f"<|assistant|>{CALL}<|end|><|tool|>{{\"product\": \"NewsDaily\"}}<|end|><|assistant|>")
    # two calls, after content, arguments given as a dict (what vLLM hands templates) or as JSON text: the same text
    two = [{"role": "user", "content": "Hi"},
           call_message(("lookup_order", arguments), ("ping", "{}"), content="Checking.")]
    as_dicts = [two[0], call_message(("lookup_order", {"order_number": "36010"}), ("ping", {}), content="Checking.")]
    expected = f'<|assistant|>Checking.{CALL}\n<tool_call>\n{{"name": "ping", "arguments": {{}}}}\n</tool_call><|end|>'
    assert render(with_tools, two).endswith(expected)
    assert with_tools.apply_chat_template(as_dicts, tokenize=False) == render(with_tools, two)
    assert tools.format_call("lookup_order", {"order_number": "36010"}) == CALL


def test_a_call_handed_over_mid_arguments_continues_where_the_whole_call_would(tokenizers):
    _, with_tools = tokenizers
    conversation = tools.take("test", 1, seed=5)[0]
    prompt, call = conversation.call_turn()
    whole = render(with_tools, [*prompt, conversation.call_message()], tools.TOOLS)
    cut = call.index('"order_number": "') + len('"order_number": "') + 2  # two digits of the number written
    partial = render(with_tools, [*prompt, {"role": "assistant", "content": call[:cut]}], tools.TOOLS,
                     continue_final_message=True)
    assert partial.endswith(call[:cut]) and whole.startswith(partial)
    generation_prompt = render(with_tools, prompt, tools.TOOLS, add_generation_prompt=True)
    assert partial == generation_prompt + call[:cut]


def test_each_turn_target_is_what_the_template_renders_for_it(tokenizers):
    """What the models learn (prompt with generation prompt + target + eos) is the rendered whole conversation."""
    _, with_tools = tokenizers
    for conversation in tools.take("train", 30, seed=2):
        prompt, call = conversation.call_turn()
        after_call = render(with_tools, [*prompt, conversation.call_message()], tools.TOOLS)
        assert render(with_tools, prompt, tools.TOOLS, add_generation_prompt=True) + call + "<|end|>" == after_call
        prompt, answer = conversation.answer_turn()
        assert answer == conversation.ticket.answer_json()
        assert (render(with_tools, prompt, tools.TOOLS, add_generation_prompt=True) + answer + "<|end|>"
                == render(with_tools, conversation.messages(), tools.TOOLS))
        assert prompt[2]["tool_call_id"] == prompt[1]["tool_calls"][0]["id"]


def test_the_call_asks_for_the_broken_products_order_the_reply_copies():
    for conversation in tools.take("train", 500):
        ticket = conversation.ticket
        number = re.search(r"order (\d+) for your", ticket.answer["reply"]).group(1)
        assert conversation.call == {"name": "lookup_order", "arguments": {"order_number": number}}
        assert re.fullmatch(tools.ORDER_NUMBER_PATTERN, number)
        result = json.loads(conversation.tool_message()["content"])
        assert result["order_number"] == number and result["product"] == ticket.factors["product"]


def test_the_executor_knows_the_tickets_orders_and_nothing_else():
    two = next(t for t in task.take("train", 50) if t.factors["shape"] == "two_orders")
    order, other = two.factors["order"], two.factors["other_order"]
    assert json.loads(tools.run_tool(two, "lookup_order", {"order_number": order}))["product"] == \
        two.factors["product"]
    assert json.loads(tools.run_tool(two, "lookup_order", json.dumps({"order_number": other}))) == {
        "order_number": other, "product": two.factors["other_product"],
        "status": tools.STATUS_BY_GROUP[next(p.group for p in task.catalog.PRODUCTS
                                              if p.name == two.factors["other_product"])]}
    assert json.loads(tools.run_tool(two, "lookup_order", {"order_number": "12345"})) == {"error": "no order 12345"}
    assert "error" in json.loads(tools.run_tool(two, "lookup_order", {"order": order}))
    assert "error" in json.loads(tools.run_tool(two, "lookup_order", "{not json"))
    assert json.loads(tools.run_tool(two, "cancel_order", {"order_number": order})) == {"error": "no tool cancel_order"}
    news = tools.lookup_order({"order_number": "36010"}, {"36010": "NewsDaily"})
    assert news == '{"order_number": "36010", "product": "NewsDaily", "status": "active"}'


def test_calls_parse_as_the_hermes_parser_reads_them():
    assert tools.parse_tool_calls(CALL) == [{"name": "lookup_order", "arguments": {"order_number": "36010"}}]
    assert tools.well_formed(tools.parse_tool_calls(CALL))
    assert tools.parse_tool_calls(CALL + "\n" + CALL.replace("36010", "11111"))[1]["arguments"] == {
        "order_number": "11111"}
    assert tools.parse_tool_calls(CALL[:-len("\n</tool_call>")]) is not None  # unterminated, as hermes reads it
    assert tools.parse_tool_calls('{"queue": "billing"}') is None
    assert tools.parse_tool_calls('<tool_call>\n{"name": "lookup_order", "arguments": {"order_n') is None
    assert tools.parse_tool_calls('<tool_call>\n{"name": "lookup_order", "arguments": "36010"}\n</tool_call>') is None
    for arguments in ({"order_number": "3601"}, {"order_number": 36010}, {"order_number": "36010", "x": "1"}, {}):
        assert not tools.well_formed([{"name": "lookup_order", "arguments": arguments}])
    assert not tools.well_formed([{"name": "lookup", "arguments": {"order_number": "36010"}}])


def test_conversations_and_turn_mixes_are_deterministic_by_seed():
    ids = [conversation.call_id for conversation in tools.take("val", 20, seed=3)]
    assert ids == [conversation.call_id for conversation in tools.take("val", 20, seed=3)]
    assert ids != [conversation.call_id for conversation in tools.take("val", 20, seed=4)]
    assert len(set(ids)) == 20
    shares = {"plain": 0.3, "call": 0.4, "answer": 0.3}
    mix = tools.turns(tools.take("train", 600), shares, seed=1)
    assert mix == tools.turns(tools.take("train", 600), shares, seed=1)
    kinds = [turn.kind for turn in mix]
    assert all(abs(kinds.count(kind) / len(kinds) - share) < 0.07 for kind, share in shares.items())
    assert all((turn.tools is None) == (turn.kind == "plain") for turn in mix)
    with pytest.raises(ValueError, match="turn kinds"):
        tools.turns(mix[:1], {"chat": 1.0})


def test_the_tool_module_needs_no_torch():
    code = "import sys, distill.demo.tools; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
