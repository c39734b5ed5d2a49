"""HTTP backend: any OpenAI-compatible server that returns logprobs (vLLM in production, `kdgate engine` in tests).

Completions are always streamed upstream (with `stream_options.include_usage` so token counts come from the server)
and turned into `Delta`/`Finish` events; closing the event stream closes the upstream response, which makes vLLM
abort the request. Prompt-logprob requests (scoring) cannot be streamed in vLLM, so they are sent non-streaming.
vLLM's extension fields are sent only when they differ from their defaults, so plain OpenAI servers still work.

Token ids come as vLLM's `return_tokens_as_token_ids` tokens, `token_id:<id>`. Each sampled token's own text then
comes from its `bytes`, which vLLM fills with the token's decoded text (its alternatives' `bytes` spell the
placeholder: their texts are not known). A chunk's content is never split over its tokens: a busy vLLM packs several
tokens into one chunk, and their texts are what the shadow record keeps and what finds the answer's end token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import replace

import httpx
import pydantic_core
from httpx_sse import SSEError, aconnect_sse

from runtime.backends.retry import RetryBudget
from runtime.backends.scoring import ScoredAnswer, score_answer
from runtime.contract import (
    BackendInfo,
    Delta,
    Event,
    Finish,
    GenerationRequest,
    PromptTokenLogprobs,
    TokenLogprob,
    TopLogprob,
)
from runtime.errors import (
    GatewayError,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamUnavailable,
    from_httpx,
)
from runtime.sse import drain

log = logging.getLogger(__name__)

# Failures before any response: the request was not (or not wholly) received, so sending it again is safe.
RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError)


class HttpBackend:
    def __init__(self, info: BackendInfo, base_url: str, client: httpx.AsyncClient, api_key: str | None = None,
                 retry_budget: RetryBudget | None = None, on_retry: Callable[[], None] = lambda: None):
        self.info = info
        self.base_url = base_url.rstrip("/")
        self._client = client
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._retries = retry_budget or RetryBudget(0.0)
        self._on_retry = on_retry
        self._warned_textless = False

    def _body(self, request: GenerationRequest, stream: bool) -> dict:
        sampling = request.sampling
        body: dict = {
            "model": self.info.model,
            "messages": list(request.messages),
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.top_logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = sampling.top_logprobs
        if sampling.presence_penalty:
            body["presence_penalty"] = sampling.presence_penalty
        if sampling.frequency_penalty:
            body["frequency_penalty"] = sampling.frequency_penalty
        if sampling.logit_bias:
            body["logit_bias"] = {str(token_id): bias for token_id, bias in sampling.logit_bias}
        if sampling.repetition_penalty != 1.0:
            body["repetition_penalty"] = sampling.repetition_penalty
        if sampling.min_p:
            body["min_p"] = sampling.min_p
        if sampling.top_k > 0:
            body["top_k"] = sampling.top_k
        if sampling.stop_token_ids:
            body["stop_token_ids"] = list(sampling.stop_token_ids)
        if sampling.ignore_eos:
            body["ignore_eos"] = True
        if not request.add_generation_prompt:
            body["add_generation_prompt"] = False
        if request.continue_final_message:
            body["continue_final_message"] = True
        if request.prompt_logprobs is not None:
            body["prompt_logprobs"] = request.prompt_logprobs
            body["return_token_ids"] = True
        if request.token_ids and sampling.top_logprobs is not None:
            body["return_tokens_as_token_ids"] = True
        if request.structured_outputs is not None:
            body["structured_outputs"] = request.structured_outputs
        if request.tools:
            # rendered by the template, not parsed by vLLM: the answer comes back as text (vLLM renders `tools` under
            # `tool_choice: none` unless launched with --exclude-tools-when-tool-choice-none)
            body["tools"] = list(request.tools)
            body["tool_choice"] = "none"
        return body

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        url = f"{self.base_url}/{'completions' if request.prompt is not None else 'chat/completions'}"
        try:
            if request.prompt_logprobs is not None:
                async for event in self._generate_once(url, request):
                    yield event
            else:
                async for event in self._generate_streamed(url, request):
                    yield event
        except httpx.HTTPError as exc:
            raise from_httpx(exc, backend=self.info.name, url=url) from exc

    def _completions_body(self, request: GenerationRequest, stream: bool) -> dict:
        """A raw-prompt request for vLLM's `/v1/completions`: the chat body with `prompt` for the messages and the
        completions API's `logprobs: k` for the chat API's `logprobs: true, top_logprobs: k`."""
        body = self._body(request, stream)
        for chat_only in ("messages", "add_generation_prompt", "continue_final_message", "top_logprobs"):
            body.pop(chat_only, None)
        if request.sampling.top_logprobs is not None:
            body["logprobs"] = request.sampling.top_logprobs
        return {"model": body.pop("model"), "prompt": request.prompt, **body}

    async def _connect(self, stack: AsyncExitStack, url: str, body: dict):
        """The event source, once the response's headers are in. A request that failed before any response (refused,
        or a pooled keep-alive connection the server had just closed) is sent once more if the budget allows."""
        self._retries.requested()
        try:
            return await stack.enter_async_context(aconnect_sse(self._client, "POST", url, json=body,
                                                                headers=self._headers))
        except RETRYABLE:
            if not self._retries.spend():
                raise
        self._on_retry()
        return await stack.enter_async_context(aconnect_sse(self._client, "POST", url, json=body,
                                                            headers=self._headers))

    async def _generate_streamed(self, url: str, request: GenerationRequest) -> AsyncIterator[Event]:
        body = self._body(request, stream=True) if request.prompt is None else self._completions_body(request, True)
        async with AsyncExitStack() as stack:
            source = await self._connect(stack, url, body)
            await self._raise_for_status(source.response)
            finish_reason, stop_reason, usage = None, None, None
            events = source.aiter_sse()
            sent = False  # a token has gone out: an error event now breaks an answer, it no longer refuses a request
            try:
                async for sse in events:
                    if sse.data == "[DONE]":
                        await drain(events)
                        break
                    chunk = self._parse_json(sse.data)
                    if "error" in chunk or chunk.get("object") == "error":  # current and pre-0.10.1 vLLM shapes
                        raise self._rejected_midstream(chunk, sent)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or ():
                        delta = self._delta_of(choice)
                        if delta is not None:
                            sent = True
                            yield delta
                        if choice.get("finish_reason"):
                            finish_reason, stop_reason = choice["finish_reason"], choice.get("stop_reason")
            except SSEError as exc:
                raise UpstreamProtocolError(f"backend `{self.info.name}` did not answer with an event stream: {exc}",
                                            backend=self.info.name) from exc
            if finish_reason is None:
                raise UpstreamProtocolError(f"backend `{self.info.name}` ended the stream without a finish_reason",
                                            backend=self.info.name)
            yield Finish(finish_reason=finish_reason, stop_reason=stop_reason,
                         prompt_tokens=(usage or {}).get("prompt_tokens", 0),
                         completion_tokens=(usage or {}).get("completion_tokens", 0))

    async def _generate_once(self, url: str, request: GenerationRequest) -> AsyncIterator[Event]:
        response = await self._client.post(url, json=self._body(request, stream=False), headers=self._headers)
        await self._raise_for_status(response)
        payload = self._parse_json(response.text)
        try:
            choice = payload["choices"][0]
            delta = self._delta_of({"delta": choice["message"], "logprobs": choice.get("logprobs")})
            usage = payload.get("usage") or {}
            prompt_logprobs = payload.get("prompt_logprobs")
            finish = Finish(
                finish_reason=choice.get("finish_reason") or "stop",
                stop_reason=choice.get("stop_reason"),
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
                prompt_token_ids=tuple(payload["prompt_token_ids"]) if payload.get("prompt_token_ids") else None,
                prompt_logprobs=tuple(_prompt_position(entry) for entry in prompt_logprobs)
                if prompt_logprobs is not None else None,
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise UpstreamProtocolError(f"backend `{self.info.name}` sent a malformed completion: {exc!r}",
                                        backend=self.info.name) from exc
        if delta is not None:
            yield delta
        yield finish

    def _delta_of(self, choice: dict) -> Delta | None:
        """A chat chunk's choice (`delta.content`, `logprobs.content`), or a completions chunk's (`text`, and
        `logprobs` in that API's shape)."""
        if "text" in choice:
            return self._completion_delta_of(choice)
        text = (choice.get("delta") or {}).get("content") or ""
        content = (choice.get("logprobs") or {}).get("content") or ()
        try:
            logprobs = tuple(_token_logprob(item) for item in content)
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamProtocolError(f"backend `{self.info.name}` sent malformed logprobs: {exc!r}",
                                        backend=self.info.name) from exc
        return self._delta(text, logprobs)

    def _completion_delta_of(self, choice: dict) -> Delta | None:
        try:
            logprobs = _completion_logprobs(choice.get("logprobs"))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise UpstreamProtocolError(f"backend `{self.info.name}` sent malformed logprobs: {exc!r}",
                                        backend=self.info.name) from exc
        return self._delta(choice.get("text") or "", logprobs)

    def _delta(self, text: str, logprobs: tuple[TokenLogprob, ...]) -> Delta | None:
        """A chunk's event; a `token_id:<id>` token whose text is not known gets the chunk's text when it is the
        chunk's only token."""
        if not text and not logprobs:
            return None
        unknown = [index for index, entry in enumerate(logprobs) if entry.token is None]
        if len(unknown) == 1 == len(logprobs):  # one token, the whole chunk: its text is the content
            logprobs = (replace(logprobs[0], token=text),)
        elif unknown:
            logprobs = tuple(replace(entry, token="") if entry.token is None else entry for entry in logprobs)
            self._warn_textless(len(logprobs))
        return Delta(text=text, logprobs=logprobs)

    def _warn_textless(self, tokens: int) -> None:
        if self._warned_textless:
            return
        self._warned_textless = True
        log.warning("backend `%s` sent %d `token_id:<id>` tokens in one chunk without their texts in `bytes` (vLLM "
                    "sends them); their texts are left empty, so shadow records of its answers cannot be aligned. "
                    "Serve it with vLLM, or ask it for one token per chunk", self.info.name, tokens)

    def _parse_json(self, data: str) -> dict:
        try:
            value = pydantic_core.from_json(data)  # twice json.loads' speed, and this runs once per token
        except ValueError as exc:
            raise UpstreamProtocolError(f"backend `{self.info.name}` sent invalid JSON: {data[:200]!r}",
                                        backend=self.info.name) from exc
        if not isinstance(value, dict):
            raise UpstreamProtocolError(f"backend `{self.info.name}` sent {type(value).__name__}, not an object",
                                        backend=self.info.name)
        return value

    async def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code == 200:
            return
        await response.aread()
        message, parameter = _error_message(response)
        where = f"backend `{self.info.name}` ({self.info.model})"
        if response.status_code == 404:  # the gateway names the model, never the client: a replica that restarted
            raise UpstreamUnavailable(  # without the version's adapter, or a wrong `model`; served around, not passed on
                f"{where} does not serve model `{self.info.model}` (HTTP 404: {message}); a student replica that "
                "restarted gets its adapter back within `students.reconcile_interval_s`", backend=self.info.name)
        if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 408, 429):
            raise UpstreamRejected(f"{where} rejected the request: {message}", backend=self.info.name,
                                   status_code=response.status_code, parameter=parameter)
        if response.status_code in (401, 403):
            raise UpstreamUnavailable(f"{where} refused our credentials (HTTP {response.status_code}): {message}; "
                                      "check the backend's api_key", backend=self.info.name)
        raise UpstreamUnavailable(f"{where} failed with HTTP {response.status_code}: {message}",
                                  backend=self.info.name)

    def _rejected_midstream(self, chunk: dict, sent: bool) -> GatewayError:
        """An error event in the stream. Before any token, with a 4xx code, it is vLLM refusing the request after
        its 200 (an out-of-vocabulary `logit_bias` id is checked only then): the client's 400 naming the field, as
        the same request unstreamed gets. Otherwise the answer broke."""
        error = chunk.get("error") or chunk
        message = error.get("message", error) if isinstance(error, dict) else error
        code = str(error.get("code", "")) if isinstance(error, dict) else ""
        if not sent and code.isdigit() and 400 <= int(code) < 500 and int(code) not in (401, 403, 408, 429):
            return UpstreamRejected(f"backend `{self.info.name}` ({self.info.model}) rejected the request: {message}",
                                    backend=self.info.name, status_code=int(code), parameter=error.get("param"))
        return UpstreamProtocolError(f"backend `{self.info.name}` failed mid-stream: {message}", backend=self.info.name)

    async def score(self, messages: list[dict], answer: str, top_logprobs: int,
                    tools: tuple[dict, ...] | None = None) -> ScoredAnswer:
        return await score_answer(self, messages, answer, top_logprobs, tools)

    async def check_ready(self) -> None:
        url = f"{self.base_url}/models"
        try:
            response = await self._client.get(url, headers=self._headers, timeout=5.0)
        except httpx.HTTPError as exc:
            raise from_httpx(exc, backend=self.info.name, url=url) from exc
        if response.status_code != 200:
            raise UpstreamUnavailable(f"backend `{self.info.name}` answered HTTP {response.status_code} on {url}",
                                      backend=self.info.name)
        served = {card.get("id") for card in (response.json().get("data") or ())}
        if self.info.model not in served:
            raise UpstreamUnavailable(f"backend `{self.info.name}` at {self.base_url} does not serve model "
                                      f"`{self.info.model}` (it serves {sorted(served)}); fix the backend's model",
                                      backend=self.info.name)

    async def aclose(self) -> None:
        """The shared client belongs to the app; nothing of our own to close."""


def _prompt_position(entry: dict | None) -> PromptTokenLogprobs | None:
    if entry is None:
        return None
    return PromptTokenLogprobs({int(token_id): (float(item["logprob"]), item.get("rank"), item.get("decoded_token"))
                                for token_id, item in entry.items()})


def _error_message(response: httpx.Response) -> tuple[str, str | None]:
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:300] or response.reason_phrase, None
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        return str(error.get("message", error)), error.get("param")
    return str(error), None


def _token_id(token: str) -> int | None:
    """vLLM's `return_tokens_as_token_ids` form `token_id:<id>`; None for a plain token text."""
    if token.startswith("token_id:") and token[9:].lstrip("-").isdigit():
        return int(token[9:])
    return None


def _token_logprob(item: dict) -> TokenLogprob:
    """One `logprobs.content` entry. A `token_id:<id>` token's text is its `bytes` decoded (None when they are
    missing or spell the placeholder: the caller decides); its alternatives' texts are not sent: empty."""
    token_id = _token_id(item["token"])
    tops = tuple(TopLogprob(token="" if (top_id := _token_id(top["token"])) is not None else top["token"],
                            logprob=float(top["logprob"]), token_id=top_id)
                 for top in item.get("top_logprobs") or ())
    token = item["token"] if token_id is None else _text_of_bytes(item.get("bytes"), item["token"])
    return TokenLogprob(token=token, logprob=float(item["logprob"]), top_logprobs=tops, token_id=token_id)


def _completion_logprobs(logprobs: dict | None) -> tuple[TokenLogprob, ...]:
    """The completions API's `{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], ...}` as entries: its
    top dicts list the sampled token first, then the top k by rank, as the contract wants them. A `token_id:<id>`
    token's text is not sent (the API has no `bytes`): None, for the caller."""
    if not logprobs:
        return ()
    entries = []
    for token, logprob, tops in zip(logprobs["tokens"], logprobs["token_logprobs"],
                                    logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"]), strict=True):
        token_id = _token_id(token)
        alternatives = tuple(TopLogprob(token="" if (top_id := _token_id(top)) is not None else top,
                                        logprob=float(value), token_id=top_id) for top, value in (tops or {}).items())
        entries.append(TokenLogprob(token=token if token_id is None else None, logprob=float(logprob),
                                    top_logprobs=alternatives, token_id=token_id))
    return tuple(entries)


def _text_of_bytes(raw, placeholder: str) -> str | None:
    """vLLM's `bytes` of a sampled `token_id:<id>` token: its decoded text as UTF-8 (vLLM encodes with
    errors="replace", so they decode). None when there are none, or when they spell the placeholder itself."""
    if not isinstance(raw, list):
        return None
    text = bytes(raw).decode("utf-8", errors="replace")
    return None if text == placeholder else text
