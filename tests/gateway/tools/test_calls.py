"""Tool calls parsed out of the hermes text, whole and streamed: a stream's pieces put back together are the
whole answer's calls, wherever the text was cut."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.tools.calls import ArgumentsPiece, CallStart, CallStream, ContentPiece, parse

CALL = '<tool_call>\n{"name": "lookup_order", "arguments": {"order_number": "36010"}}\n</tool_call>'
OTHER = '<tool_call>\n{"name": "refund", "arguments": {"order_number": "11111", "amount": 2.5}}\n</tool_call>'


def streamed(text: str, cuts: list[int]) -> tuple[str, list[tuple[str, str]]]:
    """The content and (name, arguments) of each call, from `text` fed in pieces cut at `cuts`."""
    stream, pieces, last = CallStream(), [], 0
    for cut in sorted({min(max(cut, 0), len(text)) for cut in cuts}) + [len(text)]:
        pieces += stream.feed(text[last:cut])
        last = cut
    pieces += stream.close()
    content = "".join(piece.text for piece in pieces if isinstance(piece, ContentPiece))
    names = [piece.name for piece in pieces if isinstance(piece, CallStart)]
    arguments = ["".join(piece.text for piece in pieces if isinstance(piece, ArgumentsPiece) and piece.index == index)
                 for index in range(len(names))]
    return content, list(zip(names, arguments, strict=True))


def test_a_whole_answer_with_one_call():
    content, calls = parse(CALL)
    assert content is None
    assert [(call.name, json.loads(call.arguments)) for call in calls] == [("lookup_order", {"order_number": "36010"})]
    assert calls[0].id.startswith("call_")


def test_text_before_the_calls_is_content_and_calls_come_in_order():
    content, calls = parse("Let me check. " + CALL + "\n" + OTHER)
    assert content == "Let me check. "
    assert [call.name for call in calls] == ["lookup_order", "refund"]
    assert json.loads(calls[1].arguments) == {"order_number": "11111", "amount": 2.5}


def test_a_call_that_does_not_parse_leaves_the_whole_text_as_content():
    broken = '<tool_call>\n{"name": "lookup_order", "arguments": {"order_number": 36\n</tool_call>'
    assert parse(broken) == (broken, [])
    assert parse("no calls <tool_ here") == ("no calls <tool_ here", [])


def test_a_stream_holds_back_what_may_be_a_tag_and_gives_it_back_when_it_is_not():
    assert streamed("a <tool_cal", [3, 5, 8]) == ("a <tool_cal", [])
    stream = CallStream()
    assert stream.feed("a <tool_") == [ContentPiece("a ")]  # `<tool_` may start a call: not sent yet
    assert stream.close() == [ContentPiece("<tool_")]


def test_the_name_goes_out_once_whole_then_the_arguments_as_they_grow():
    stream = CallStream()
    assert stream.feed('<tool_call>\n{"name": "look') == []
    [start] = stream.feed('up_order", "arguments": ')
    assert isinstance(start, CallStart) and start.name == "lookup_order" and start.index == 0
    assert stream.feed('{"order_number": "36') == [ArgumentsPiece(0, '{"order_number": "36')]
    assert stream.feed('010"}}\n</tool_call>') == [ArgumentsPiece(0, '010"}')]
    assert stream.called


@settings(deadline=None)  # a loaded CI box is slow, not wrong: the property is what is checked
@given(st.lists(st.integers(0, 200), max_size=12), st.sampled_from(["", "Checking. "]), st.booleans())
def test_streamed_pieces_add_up_to_the_whole_answer(cuts, before, two):
    text = before + CALL + ("\n" + OTHER if two else "")
    content, calls = parse(text)
    streamed_content, streamed_calls = streamed(text, cuts)
    assert streamed_content == (content or "")
    assert [(name, json.loads(arguments)) for name, arguments in streamed_calls] == \
        [(call.name, json.loads(call.arguments)) for call in calls]
