"""What can reach a log line (gateway/logs.py): the characters other tools take for a line break (NEL, U+2028/9) and
the bidirectional controls that reorder what a reader sees are escaped in text and JSON logs alike, and a URL's
password is masked in messages and tracebacks."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from gateway.logs import TEXT_FORMAT, EscapingFormatter, JsonFormatter, escape

# NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR, RIGHT-TO-LEFT OVERRIDE, RIGHT-TO-LEFT ISOLATE, POP DIRECTIONAL ISOLATE
UNSAFE = ["\x85", "\u2028", "\u2029", "\u202e", "\u2067", "\u2069", "\u200f"]


def record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("gateway", logging.WARNING, __file__, 1, message, args, exc_info)


@pytest.mark.parametrize("character", UNSAFE)
def test_line_breaks_and_bidi_controls_are_escaped(character):
    text = EscapingFormatter(TEXT_FORMAT).format(record("field %s", f"ok{character}FORGED line"))
    assert character not in text and f"\\u{ord(character):04x}" in text
    line = JsonFormatter().format(record("field %s", f"ok{character}FORGED line"))
    assert character not in line
    assert json.loads(line)["message"] == f"field ok{character}FORGED line"  # escaped, not changed
    assert escape(f"a{character}b") == f"a\\u{ord(character):04x}b"


def test_ordinary_text_is_left_alone():
    assert escape("naïve café – 日本語 ✓") == "naïve café – 日本語 ✓"


def test_a_url_password_is_masked_in_messages_and_tracebacks():
    try:
        raise ConnectionError("cannot reach postgresql://kdgate:s3cr3t@db/shadow")
    except ConnectionError:
        failing = record("store %s down", "postgresql://kdgate:s3cr3t@db/shadow", exc_info=sys.exc_info())
    for formatter in (EscapingFormatter(TEXT_FORMAT), JsonFormatter()):
        text = formatter.format(failing)
        assert "s3cr3t" not in text and "postgresql://kdgate:***@db/shadow" in text
