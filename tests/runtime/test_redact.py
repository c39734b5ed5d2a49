"""The one redaction rule (runtime/redact.py): passwords in URLs, secret query values and bearer tokens are masked,
and nothing else changes."""

from __future__ import annotations

import pytest

from runtime.redact import redact, redact_values


@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql+psycopg://kdgate:s3cr3t@db:5432/shadow", "postgresql+psycopg://kdgate:***@db:5432/shadow"),
    ("store postgresql://u:p%40ss@h/db ready", "store postgresql://u:***@h/db ready"),
    ("http://user:pw@vllm:8000/v1 (teacher)", "http://user:***@vllm:8000/v1 (teacher)"),
    ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0"),
    ("postgresql://h/db?sslmode=require&password=abc&user=x", "postgresql://h/db?sslmode=require&password=***&user=x"),
    ("https://api/v1?api_key=sk-123#top", "https://api/v1?api_key=***#top"),
    ("Authorization: Bearer kdg-abc.def", "Authorization: Bearer ***"),
])
def test_secrets_are_masked(text, shown):
    assert redact(text) == shown


@pytest.mark.parametrize("text", [
    "sqlite:///var/kdgate-shadow.sqlite3", "http://127.0.0.1:8001/v1", "postgresql://kdgate@db/shadow",
    "ratio 3:4 at 10:30", "user@example.com wrote", "a key=value pair", "",
])
def test_text_without_secrets_is_unchanged(text):
    assert redact(text) == text


def test_every_string_of_a_settings_dump_is_masked():
    dump = {"shadow": {"store_url": "postgresql://a:b@c/d", "sample_rate": 0.5},
            "extra": ["http://x:y@z/v1", 3, None], "student": {"api_key": "**********"}}
    assert redact_values(dump) == {"shadow": {"store_url": "postgresql://a:***@c/d", "sample_rate": 0.5},
                                   "extra": ["http://x:***@z/v1", 3, None], "student": {"api_key": "**********"}}
