"""The text-chunk template gives exactly the wire model's bytes, whatever the text (as chat's does)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.completions import protocol
from gateway.completions.frames import TextFrames


def through_the_model(frames: TextFrames, text: str) -> str:
    return frames.frame([protocol.CompletionChoice(text=text)])


@given(text=st.text(), model=st.text(min_size=1), created=st.integers(min_value=0, max_value=2**40))
def test_text_frame_equals_the_models_frame(text, model, created):
    frames = TextFrames("cmpl-x", created, model)
    assert frames.text(text) == through_the_model(frames, text)


def test_awkward_text_and_names():
    frames = TextFrames("kdgate-text-mark", 1, "kdgate-text-mark")
    for text in ("", '"', "\\", "\n\t\x00\x1f", "é中文🙂", "\u2028\u2029", "kdgate-text-mark", "</script>"):
        assert frames.text(text) == through_the_model(frames, text), repr(text)
