"""The exception tree's boundary: every httpx failure has a specific translation, and the envelope shape."""

from __future__ import annotations

import inspect

import httpx
import pytest

from runtime import errors

HTTPX_ERRORS = sorted({cls for _, cls in inspect.getmembers(httpx, inspect.isclass)
                       if issubclass(cls, (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError))},
                      key=lambda cls: cls.__name__)


def make(cls):
    request = httpx.Request("POST", "http://backend/v1/chat/completions")
    if issubclass(cls, httpx.HTTPStatusError):
        return cls("boom", request=request, response=httpx.Response(500, request=request))
    if issubclass(cls, httpx.RequestError):
        return cls("boom", request=request)
    try:
        return cls("boom")
    except TypeError:  # the stream-state errors take no message
        return cls()


@pytest.mark.parametrize("cls", HTTPX_ERRORS, ids=lambda cls: cls.__name__)
def test_every_httpx_error_class_has_a_specific_mapping(cls):
    translated = errors.from_httpx(make(cls), backend="teacher", url="http://backend/v1")
    assert isinstance(translated, errors.UpstreamError)
    assert type(translated) is not errors.UpstreamError, f"{cls.__name__} fell through to the generic branch"
    assert "teacher" in translated.message


def test_timeouts_and_connection_failures_map_to_504_and_503():
    request = httpx.Request("GET", "http://x")
    timeout = errors.from_httpx(httpx.ReadTimeout("t", request=request), backend="b", url="u")
    refused = errors.from_httpx(httpx.ConnectError("c", request=request), backend="b", url="u")
    assert errors.to_envelope(timeout)[0] == 504 and errors.to_envelope(refused)[0] == 503


def test_envelope_has_openai_shape():
    status, body = errors.to_envelope(errors.InvalidRequest("`n` must be 1", parameter="n"))
    assert status == 400
    assert body == {"error": {"message": "`n` must be 1", "type": "invalid_request_error", "param": "n", "code": None}}


def test_an_httpx_error_without_a_message_is_named_by_its_class():
    """One keep-alive race gave '503 … is unreachable ()': an empty reason. The class name stands in for it."""
    error = errors.from_httpx(httpx.ConnectError(""), backend="teacher", url="http://teacher:8002/v1/chat/completions")
    assert "(ConnectError)" in error.message and "()" not in error.message


def test_every_shed_reply_says_when_to_retry():
    """503s that mean "no capacity now" carry Retry-After; a full backend cap (`BackendBusy`) had none."""
    from runtime.errors import BackendBusy, Overloaded

    assert BackendBusy("teacher at its cap", backend="teacher").headers() == {"Retry-After": "1"}
    assert BackendBusy("teacher at its cap", backend="teacher", retry_after=2.5).headers() == {"Retry-After": "3"}
    assert Overloaded("queue full", retry_after=0.2).headers() == {"Retry-After": "1"}
