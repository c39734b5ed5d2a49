"""The gateway's one exception tree and its mapping to OpenAI's error envelope.

    GatewayError
    ├── InvalidRequest(parameter)             400 invalid_request_error
    │   ├── PayloadTooLarge                   413
    │   ├── RequestTimeout                    408 (the body did not arrive in time)
    │   ├── UnsupportedMediaType              415
    │   ├── ModelNotFound                     404
    │   └── NotFound                          404 (an admin resource: a student version)
    ├── Conflict                              409 (the state moved: another promotion landed first)
    ├── Unauthenticated                       401 (no key, or an unknown one)
    ├── PermissionDenied                      403 (the key may not do this)
    ├── RateLimited(retry_after)              429 (this key's requests or tokens per minute are spent)
    ├── Overloaded(retry_after)               503 (no capacity now: the queue is full or the wait ran out)
    ├── UpstreamError(backend)
    │   ├── UpstreamTimeout                   504
    │   ├── UpstreamUnavailable               503
    │   ├── UpstreamRejected(status)          the upstream's 4xx, its message passed on
    │   └── UpstreamProtocolError             502
    └── EngineFailure                         500 (the in-process engine broke; the message says how)

Lower-level errors are translated once, at the boundary where they happen (`from_httpx` for the HTTP backend);
`to_envelope` is the only place that turns the tree into a status code and a JSON body.
"""

from __future__ import annotations

import math

import httpx

from runtime.redact import redact


class GatewayError(Exception):
    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, parameter: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.parameter = parameter
        self.code = code

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with this error's response."""
        return {}


class _RetryAfter:
    retry_after: float

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}  # whole seconds, at least 1


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class _BodyUnread:
    def headers(self) -> dict[str, str]:
        """Answered before the body was read whole: the connection ends with the answer (runtime.connections
        closes it too, whatever the application said)."""
        return {"Connection": "close"}


class PayloadTooLarge(_BodyUnread, InvalidRequest):
    status_code = 413


class RequestTimeout(_BodyUnread, InvalidRequest):
    status_code = 408


class UnsupportedMediaType(InvalidRequest):
    status_code = 415


class ModelNotFound(InvalidRequest):
    status_code = 404

    def __init__(self, message: str):
        super().__init__(message, parameter="model", code="model_not_found")


class NotFound(InvalidRequest):
    status_code = 404

    def __init__(self, message: str, *, parameter: str | None = None):
        super().__init__(message, parameter=parameter, code="not_found")


class Conflict(GatewayError):
    status_code = 409
    error_type = "invalid_request_error"

    def __init__(self, message: str):
        super().__init__(message, code="conflict")


class Unauthenticated(GatewayError):
    status_code = 401
    error_type = "invalid_request_error"

    def __init__(self, message: str):
        super().__init__(message, code="invalid_api_key")

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="kdgate"'}


class PermissionDenied(GatewayError):
    status_code = 403
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, parameter: str | None = None):
        super().__init__(message, parameter=parameter, code="permission_denied")


class RateLimited(_RetryAfter, GatewayError):
    status_code = 429

    def __init__(self, message: str, *, retry_after: float, kind: str):
        super().__init__(message, code="rate_limit_exceeded")
        self.error_type = kind  # OpenAI's: "requests" or "tokens"
        self.retry_after = retry_after


class Overloaded(_RetryAfter, GatewayError):
    status_code = 503
    error_type = "server_error"

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message, code="overloaded")
        self.retry_after = retry_after


class UpstreamError(GatewayError):
    status_code = 502
    error_type = "upstream_error"

    def __init__(self, message: str, *, backend: str, parameter: str | None = None, code: str | None = None):
        super().__init__(message, parameter=parameter, code=code)
        self.backend = backend


class UpstreamTimeout(UpstreamError):
    status_code = 504


class UpstreamUnavailable(UpstreamError):
    status_code = 503


class BackendBusy(_RetryAfter, UpstreamUnavailable):
    """The backend's in-flight cap is reached and no slot came free in time: a shed reply, with Retry-After like
    the others."""

    def __init__(self, message: str, *, backend: str, retry_after: float = 1.0):
        super().__init__(message, backend=backend)
        self.retry_after = retry_after


class UpstreamRejected(UpstreamError):
    """The upstream answered 4xx: the request was wrong for it. Its status and message are passed on."""

    error_type = "invalid_request_error"

    def __init__(self, message: str, *, backend: str, status_code: int, parameter: str | None = None):
        super().__init__(message, backend=backend, parameter=parameter)
        self.status_code = status_code


class UpstreamProtocolError(UpstreamError):
    status_code = 502


class EngineFailure(GatewayError):
    status_code = 500
    error_type = "engine_error"


def envelope(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error body `{"error": {"message", "type", "param", "code"}}`: `code` a string or null, as OpenAI's
    (the HTTP status is the response's own; the SDKs read `code` as a string)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def to_envelope(error: GatewayError) -> tuple[int, dict]:
    """The envelope and the HTTP status for an error of the tree."""
    return error.status_code, envelope(redact(error.message), error.error_type, error.parameter, error.code)


def from_httpx(exc: httpx.HTTPError | httpx.InvalidURL | httpx.StreamError, *, backend: str, url: str) -> UpstreamError:
    """Translate an httpx failure talking to `backend` into the tree. Every httpx exception class has a branch.
    The message goes to clients: it names the backend's role, never its internal address (`url` is unused)."""
    where = f"backend `{backend}`"
    detail = str(exc) or type(exc).__name__  # some httpx errors carry no message: name the class instead
    if isinstance(exc, httpx.TimeoutException):
        kind = type(exc).__name__
        return UpstreamTimeout(f"{where} timed out ({kind}); check that it is healthy or raise its timeout",
                               backend=backend)
    if isinstance(exc, (httpx.ConnectError, httpx.NetworkError, httpx.ProxyError)):
        return UpstreamUnavailable(f"{where} is unreachable ({detail}); check that the server is running",
                                   backend=backend)
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.DecodingError, httpx.TooManyRedirects,
                        httpx.LocalProtocolError, httpx.StreamError)):
        return UpstreamProtocolError(f"{where} broke the HTTP protocol ({type(exc).__name__}: {detail})",
                                     backend=backend)
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return UpstreamUnavailable(f"{where}: the URL is not usable ({exc}); fix the backend's base_url",
                                   backend=backend)
    if isinstance(exc, httpx.HTTPStatusError):
        return UpstreamProtocolError(f"{where} answered HTTP {exc.response.status_code}", backend=backend)
    if isinstance(exc, httpx.RequestError):  # RequestError/TransportError themselves: the request did not go out
        return UpstreamUnavailable(f"{where}: the request failed ({type(exc).__name__}: {exc})", backend=backend)
    if isinstance(exc, httpx.HTTPError):
        return UpstreamProtocolError(f"{where} failed ({type(exc).__name__}: {exc})", backend=backend)
    return UpstreamError(f"{where} failed ({type(exc).__name__}: {exc})", backend=backend)
