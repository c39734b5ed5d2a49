"""The content-chunk template gives exactly the wire model's bytes, whatever the text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.chat import protocol
from gateway.chat.frames import ChunkFrames


@given(text=st.text(), model=st.text(min_size=1), created=st.integers(min_value=0, max_value=2**40))
def test_content_frame_equals_the_models_frame(text, model, created):
    frames = ChunkFrames("chatcmpl-x", created, model)
    expected = frames.frame([protocol.ChatCompletionChunkChoice(delta=protocol.DeltaMessage(content=text))])
    assert frames.content(text) == expected


def test_awkward_text():
    frames = ChunkFrames("chatcmpl-y", 1, "m")
    for text in ("", '"', "\\", "\n\t\x00\x1f", "é中文🙂", "\u2028\u2029", "kdgate-content-mark", "</script>"):
        assert frames.content(text) == frames.frame(
            [protocol.ChatCompletionChunkChoice(delta=protocol.DeltaMessage(content=text))]), repr(text)


def test_a_model_named_like_the_mark():
    frames = ChunkFrames("kdgate-content-mark", 1, "kdgate-content-mark")
    assert frames.content("hi") == frames.frame(
        [protocol.ChatCompletionChunkChoice(delta=protocol.DeltaMessage(content="hi"))])
