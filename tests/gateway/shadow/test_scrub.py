"""The scrubber removes personal data and secrets and keeps what training needs (order and ticket numbers)."""

from __future__ import annotations

import pytest

from gateway.shadow.scrub import Scrubber


@pytest.mark.parametrize(("text", "expected"), [
    ("write to maria.lopez@example.co.uk today", "write to [EMAIL] today"),
    ("call +49 30 1234567 or (030) 123-4567 or 551 5355", "call [PHONE] or [PHONE] or [PHONE]"),
    ("card 4111 1111 1111 1111 and 4111-1111-1111-1111", "card [CARD] and [CARD]"),
    ("key sk-proj-abc123DEF456ghi789 and ghp_0123456789abcdefghijABCDEFGHIJ", "key [SECRET] and [SECRET]"),
    ("Authorization: Bearer abcdefghijklmnop.qrstu", "Authorization: [SECRET]"),
    ("token 0123456789abcdef0123456789abcdef!", "token [SECRET]!"),
])
def test_personal_data_and_secrets_are_replaced(text, expected):
    assert Scrubber()(text) == expected


@pytest.mark.parametrize("text", [
    "Order 48213: my SmartHub Pro will not turn on. Ticket 1426, account number 7781290, serial 123456, in 2024.",
    "not a card: 1234 5678 9012 3456 (fails the Luhn check)",
    "a plain long word: supercalifragilisticexpialidociousness",
])
def test_what_training_needs_is_kept(text):
    assert Scrubber()(text) == text


def test_extra_patterns_and_messages():
    scrub = Scrubber([r"ACME-\d+"])
    messages = scrub.messages([{"role": "user", "content": "customer ACME-42, mail a@b.io"}])
    assert messages == [{"role": "user", "content": "customer [REDACTED], mail [EMAIL]"}]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        Scrubber(["("])
