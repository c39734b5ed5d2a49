"""The text-delta template gives exactly the bytes of the event written whole, whatever the text, and the events
are numbered in the order they are made."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.responses.frames import EventFrames


def whole_delta(frames: EventFrames, item_id: str, text: str) -> str:
    return frames.event("response.output_text.delta", item_id=item_id, output_index=0, content_index=0, delta=text,
                        logprobs=[])


@given(text=st.text(), item_id=st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
       before=st.integers(min_value=0, max_value=5))
def test_a_text_delta_equals_the_event_written_whole(text, item_id, before):
    templated, whole = EventFrames(f"msg_{item_id}"), EventFrames(f"msg_{item_id}")
    for frames in (templated, whole):
        for _ in range(before):
            frames.event("response.in_progress")
    assert templated.text_delta(text) == whole_delta(whole, f"msg_{item_id}", text)


def test_awkward_text_and_the_numbers_go_on():
    templated, whole = EventFrames("msg_987654321"), EventFrames("msg_987654321")
    for text in ("", '"', "\\", "\n\t\x00\x1f", "é中文🙂", "\u2028\u2029", "kdgate-delta-mark", "987654321"):
        assert templated.text_delta(text) == whole_delta(whole, "msg_987654321", text), repr(text)
    assert templated.sequence_number == whole.sequence_number == 8
