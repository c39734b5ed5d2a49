"""Who may call what: bearer tokens checked before a request reaches any route.

| path | needs |
|---|---|
| `/healthz`, `/health`, `/readyz`, `/readyz/adapters`, `/openapi.json`, `/docs`, `/redoc` | nothing (details: admin) |
| `/v1/...` | a chat key, or the admin credential |
| `/metrics` | the metrics token, or the admin credential |
| `/admin/...` | the admin credential |

Keys are stored as SHA-256 digests; a presented token is hashed and compared with every configured digest by
`hmac.compare_digest`, so neither a match nor a miss returns early. Random keys of 32 bytes make a plain hash the
right tool (no password stretching needed: there is nothing to guess). With authentication off (`auth.mode: none`,
or no keys on a loopback address) every caller is the anonymous principal with every chat permission.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from gateway.asgi import send_error
from gateway.logs import escape
from gateway.metrics import GatewayMetrics
from gateway.settings import AuthSettings, GatewaySettings, KeySettings
from runtime.credentials import bearer, identify
from runtime.errors import GatewayError, PermissionDenied, Unauthenticated

OPEN_PATHS = frozenset({"/healthz", "/health", "/readyz", "/readyz/adapters", "/openapi.json", "/docs",
                        "/docs/oauth2-redirect", "/redoc"})
ALL_PERMISSIONS = frozenset({"force_route", "prompt_logprobs"})
access_log = logging.getLogger("gateway.access")  # one line per API call: method, path, status, time, key, route


@dataclass(frozen=True)
class Principal:
    """The caller of one request: a key's name and what it may do."""

    name: str
    permissions: frozenset[str]
    admin: bool = False
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def may(self, permission: str) -> bool:
        return self.admin or permission in self.permissions


ANONYMOUS = Principal("anonymous", ALL_PERMISSIONS)
ADMIN = Principal("admin", ALL_PERMISSIONS, admin=True)
METRICS = Principal("metrics", frozenset())


@dataclass(frozen=True)
class Credentials:
    required: bool
    keys: tuple[tuple[bytes, Principal], ...]  # (SHA-256 digest, who)

    def identify(self, token: str | None) -> Principal | None:
        """The principal whose digest matches, compared against every digest; None when none does."""
        return identify(token, self.keys)


def load_credentials(settings: GatewaySettings) -> Credentials:
    """The configured keys (settings and `keys_file`), admin and metrics digests; a bad file is a ValueError."""
    auth = settings.auth
    entries = list(auth.keys) + _keys_from_file(auth.keys_file)
    names = [entry.name for entry in entries]
    if len(names) != len(set(names)):
        raise ValueError("two API keys share a name across `auth.keys` and `auth.keys_file`; rename one")
    keys = [(bytes.fromhex(entry.sha256), Principal(entry.name, frozenset(entry.permissions),
                                                     requests_per_minute=entry.requests_per_minute,
                                                     tokens_per_minute=entry.tokens_per_minute)) for entry in entries]
    if auth.admin_sha256:
        keys.append((bytes.fromhex(auth.admin_sha256), ADMIN))
    if auth.metrics_sha256:
        keys.append((bytes.fromhex(auth.metrics_sha256), METRICS))
    return Credentials(required=settings.auth_required(), keys=tuple(keys))


def _keys_from_file(path: Path | None) -> list[KeySettings]:
    """The entries of a keys file: a YAML list of them (what `kdgate auth new-key` prints, so its outputs appended
    with `>>` make one file), or a mapping with one `keys:` list (the format before)."""
    if path is None:
        return []
    try:
        raw = yaml.load(Path(path).read_text(), Loader=_RepeatRefusingLoader) or []
    except FileNotFoundError:
        raise ValueError(f"`auth.keys_file` {path} does not exist; create it or fix the path") from None
    except OSError as error:
        raise ValueError(f"`auth.keys_file` {path} cannot be read ({error.strerror}); fix the path or its "
                         "permissions") from None
    except _RepeatedKey as error:
        hint = ("merge the lists under one `keys:`, or drop the `keys:` lines: a plain list of entries is a keys "
                "file too") if error.key == "keys" else "keep one"
        raise ValueError(f"`auth.keys_file` {path}: `{error.key}:` appears twice in one mapping (again on line "
                         f"{error.line}), and the first would be lost silently; {hint}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"`auth.keys_file` {path} is not YAML: {error}\n(entries that `kdgate auth new-key` "
                         "appended start at column 0: a `keys:` list above them must too)") from None
    if isinstance(raw, dict) and set(raw) == {"keys"}:
        raw = raw["keys"] or []
    if not isinstance(raw, list):
        raise ValueError(f"`auth.keys_file` {path} must hold a list of key entries (as `kdgate auth new-key` "
                         "prints them) or one `keys:` list")
    try:
        return AuthSettings(keys=raw).keys
    except ValidationError as error:
        problems = "; ".join(_problem(item) for item in error.errors())
        raise ValueError(f"`auth.keys_file` {path}: {problems}") from None


def _problem(item: dict) -> str:
    where = ".".join(map(str, item["loc"]))
    message = item["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


class _RepeatedKey(yaml.YAMLError):
    def __init__(self, key, line: int):
        super().__init__(key, line)
        self.key, self.line = key, line


class _RepeatRefusingLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping. PyYAML keeps the last one silently, so a file with
    two `keys:` lists (two outputs of an older `kdgate auth new-key` appended) lost every key of the first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # refused by the base class below, with its own message
            if key in seen:
                raise _RepeatedKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep)


class AuthMiddleware:
    """Pure ASGI (no per-chunk overhead on streams): refuses, or puts the caller in `request.state.principal`."""

    def __init__(self, app, credentials: Credentials, metrics: GatewayMetrics):
        self.app = app
        self.credentials = credentials
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        principal = self.credentials.identify(bearer(scope["headers"])) if self.credentials.required else ANONYMOUS
        refusal = self._refusal(path, principal)
        scope.setdefault("state", {})["principal"] = principal
        if refusal is not None:
            name = principal.name if principal else "unknown"
            self.metrics.api_requests.labels(name, str(refusal.status_code)).inc()
            client = (scope.get("client") or ("-",))[0]
            access_log.warning("%s %s %d key=%s client=%s: %s", scope["method"], path, refusal.status_code, name,
                               client, refusal.message)
            return await send_error(send, refusal)
        if path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        started = time.monotonic()

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.api_requests.labels(principal.name, str(status)).inc()
                route = next((value.decode() for name, value in message.get("headers", ())
                              if name == b"x-kdgate-route"), "-")
                access_log.info("%s %s %d %.1f ms key=%s route=%s", scope["method"], path, status,
                                1000 * (time.monotonic() - started), principal.name, route)
            await send(message)

        return await self.app(scope, receive, counting_send)

    def _refusal(self, path: str, principal: Principal | None) -> GatewayError | None:
        if path in OPEN_PATHS or not self.credentials.required:
            return None
        if principal is None:
            return Unauthenticated("no valid API key: send `Authorization: Bearer <key>` with a key this gateway "
                                   "knows (ask its operator for one)")
        if path == "/metrics":
            allowed = principal.admin or principal is METRICS
        elif path.startswith("/admin"):
            allowed = principal.admin
        else:
            allowed = principal is not METRICS
        if not allowed:
            return PermissionDenied(f"the key `{principal.name}` may not call {escape(path)}")
        return None
