"""One rule for showing settings, URLs and messages: no password, token or key is ever printed.

Applied wherever configuration or an upstream's address can surface: the start-up banners, `/admin/status`,
`kdgate config show`, error bodies sent to clients, and every log line (gateway/logs.py). It masks

- the password of a URL's user information (`postgresql://kdgate:s3cret@db/shadow` → `postgresql://kdgate:***@db/shadow`;
  the user name stays, it says which account to look at),
- the value of a query parameter whose name says it is a secret (`?password=`, `token`, `api_key`, `key`, ...),
- an `Authorization: Bearer ...` value quoted in text.

Settings declared as `SecretStr` are masked by pydantic already; this covers secrets that live inside URLs.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_USERINFO_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s]*:)[^@\s/?#]*@")
_SECRET_PARAMETER = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|token|access_token|api[_-]?key|key|secret|sslpassword)=)[^&;#\s]*",
    re.IGNORECASE)
_BEARER = re.compile(r"(?P<head>\bbearer\s+)[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every URL password, secret query value and bearer token replaced by `***`."""
    if not text:
        return text
    text = _USERINFO_PASSWORD.sub(rf"\g<head>{MASK}@", text)
    text = _SECRET_PARAMETER.sub(rf"\g<head>{MASK}", text)
    return _BEARER.sub(rf"\g<head>{MASK}", text)


def redact_values(data: Any) -> Any:
    """A settings dump (dicts, lists, strings) with `redact` applied to every string in it."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {key: redact_values(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [redact_values(value) for value in data]
    return data
