"""Scrub personal data and secrets from text before it is stored.

Replaced, in this order, by a typed placeholder: API-key-like strings and bearer tokens (`[SECRET]`), email
addresses (`[EMAIL]`), card-like numbers (13–19 digits, spaces or dashes allowed, passing the Luhn check:
`[CARD]`), phone numbers (a leading + or separators, 7–15 digits: `[PHONE]`), then any configured extra patterns
(`[REDACTED]`). Short numbers (order ids, ticket numbers, years) are kept: the shadow records must stay useful
for training. A scrubber is a safety net, not a guarantee; the store should still be treated as sensitive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SECRET = re.compile(
    r"(?:\b(?:sk|pk|rk|ghp|gho|ghs|xox[abpr]|hf|AKIA)[-_][A-Za-z0-9_\-]{12,}\b"  # vendor-prefixed API keys
    r"|\bBearer\s+[A-Za-z0-9._~+/=-]{12,}"  # bearer tokens
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
    r"|\b(?=[A-Za-z0-9+/_-]*\d)(?=[A-Za-z0-9+/_-]*[A-Za-z])[A-Za-z0-9+/_-]{32,}\b)"  # long mixed tokens, hex keys
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d[\d ().-]{6,}\d|\(?\d{2,4}\)?[ .-]\d{3,8}(?:[ .-]\d{2,4}){0,2})(?![\w])")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn_ok(digits) else match.group()


def _phone(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[PHONE]" if 7 <= len(digits) <= 15 else match.group()


class Scrubber:
    def __init__(self, extra_patterns: Iterable[str] = ()):
        self.extra = []
        for pattern in extra_patterns:
            try:
                self.extra.append(re.compile(pattern))
            except re.error as error:
                raise ValueError(f"scrub pattern {pattern!r} is not a valid regular expression: {error}") from None

    def __call__(self, text: str) -> str:
        text = _SECRET.sub("[SECRET]", text)
        text = _EMAIL.sub("[EMAIL]", text)
        text = _CARD.sub(_card, text)
        text = _PHONE.sub(_phone, text)
        for pattern in self.extra:
            text = pattern.sub("[REDACTED]", text)
        return text

    def messages(self, messages: Iterable[dict]) -> list[dict]:
        return [message | {"content": self(message["content"])} for message in messages]
