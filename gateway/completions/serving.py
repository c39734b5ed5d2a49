"""Completions serving: a completions request as one raw-prompt generation request, routed, handed off and
streamed by the path chat requests take (`gateway.serving`), and OpenAI's `text_completion` shapes.

Logprobs are vLLM's completions logprobs: per token its text, raw logprob and `text_offset` (from 0 at the first
token, each the previous one's plus its length, as vLLM counts them), and a `top_logprobs` dict of the sampled token
and the top `logprobs` alternatives (k entries, or k + 1 when the sampled token is not among the top k).
"""

from __future__ import annotations

import uuid

from gateway.chat.formats import placed
from gateway.chat.serving import route_info, usage
from gateway.completions import protocol
from gateway.completions.frames import TextFrames
from gateway.serving import DataFrames, PreparedStream, Served, Serving, sampling_params
from router.policy import RouteDecision, RouteRequest
from runtime.contract import Delta, Finish, GenerationRequest, TokenLogprob, TopLogprob
from runtime.errors import InvalidRequest


class CompletionServing(Serving):
    async def complete(self, request: protocol.CompletionRequest, forced: str | None, started: float
                       ) -> tuple[protocol.CompletionResponse, RouteDecision]:
        generation, route_request = self._prepare(request)
        return await self.complete_with(CompletionEndpoint(request, self.served_model), generation, route_request,
                                        forced, started)

    async def stream(self, request: protocol.CompletionRequest, forced: str | None, started: float
                     ) -> PreparedStream:
        generation, route_request = self._prepare(request)
        return await self.stream_with(CompletionEndpoint(request, self.served_model), generation, route_request,
                                      forced, started)

    def _prepare(self, request: protocol.CompletionRequest) -> tuple[GenerationRequest, RouteRequest]:
        self.check_model(request.model)
        generation = self._generation_request(request)
        route_request = RouteRequest(request_id=generation.request_id, message_count=0,
                                     prompt_chars=len(generation.prompt), model=request.model)
        return generation, route_request

    def _generation_request(self, request: protocol.CompletionRequest) -> GenerationRequest:
        limits = self.limits
        if request.max_tokens is not None and request.max_tokens > limits.max_tokens_limit:
            raise InvalidRequest(f"`max_tokens` must be between 1 and {limits.max_tokens_limit}, got "
                                 f"{request.max_tokens}; lower it or raise `KDGATE_MAX_TOKENS_LIMIT`",
                                 parameter="max_tokens")
        if request.logprobs is not None and request.logprobs > limits.max_top_logprobs:
            raise InvalidRequest(f"`logprobs` must be at most {limits.max_top_logprobs}, got {request.logprobs}; "
                                 "lower it or raise `KDGATE_MAX_TOP_LOGPROBS`", parameter="logprobs")
        max_tokens = request.max_tokens
        sampling = sampling_params(
            request, max_tokens=max_tokens if max_tokens is not None else min(protocol.DEFAULT_MAX_TOKENS,
                                                                              limits.max_tokens_limit),
            fit_to_context=max_tokens is None, top_logprobs=request.logprobs)
        return GenerationRequest(
            request_id=uuid.uuid4().hex,
            messages=(),
            sampling=sampling,
            token_ids=request.logprobs is not None and request.return_tokens_as_token_ids,
            structured_outputs=request.structured_spec(),
            prompt=request.text(),
        )


class CompletionEndpoint:
    """One completions request's response shapes: `text_completion`, streamed or not."""

    tool_choice = None  # no tools here

    def __init__(self, request: protocol.CompletionRequest, served_model: str):
        self.request = request
        self.model = request.model
        self.response_model = request.model or served_model
        self.echoed = request.text() if request.echo else ""  # the text before the completion's own

    def placed(self, error: InvalidRequest) -> InvalidRequest:
        return placed(error, response_format=self.request.structured_outputs is None)

    def response(self, request_id: str, text: str, logprobs: list[TokenLogprob], finish: Finish,
                 served: Served | None) -> protocol.CompletionResponse:
        return protocol.CompletionResponse(
            id=f"cmpl-{request_id}",
            model=self.response_model,
            choices=[protocol.CompletionChoice(text=self.echoed + text, logprobs=self.wire_logprobs(logprobs, 0)[0],
                                               finish_reason=finish.finish_reason, stop_reason=finish.stop_reason)],
            usage=usage(finish),
            kdgate=route_info(served),
        )

    def stream(self, request_id: str, created: int) -> CompletionStream:
        return CompletionStream(self, TextFrames(f"cmpl-{request_id}", created, self.response_model))

    def wire_logprobs(self, logprobs, offset: int) -> tuple[protocol.CompletionLogprobs | None, int]:
        """The tokens' logprobs, their text offsets counted from `offset`, and the offset after the last."""
        request = self.request
        if request.logprobs is None:
            return None, offset
        as_ids = request.return_tokens_as_token_ids

        def name(token: str, token_id: int | None) -> str:
            return f"token_id:{token_id}" if as_ids and token_id is not None else token

        wire = protocol.CompletionLogprobs()
        for entry in logprobs:
            token = name(entry.token, entry.token_id)
            wire.text_offset.append(offset)
            wire.tokens.append(token)
            wire.token_logprobs.append(entry.logprob)
            wire.top_logprobs.append({name(top.token, top.token_id): top.logprob
                                      for top in completion_top(entry, request.logprobs)})
            offset += len(token)
        return wire, offset


class CompletionStream(DataFrames):
    """A completions stream's frames: the prompt first when echoed, text chunks, the finish chunk, an optional
    usage chunk (`choices: []`)."""

    def __init__(self, endpoint: CompletionEndpoint, frames: TextFrames):
        self.endpoint = endpoint
        self.frames = frames
        self.plain = endpoint.request.logprobs is None
        options = endpoint.request.stream_options
        self.include_usage = bool(options and options.include_usage)
        self.offset = 0  # where the next token's text starts, for `text_offset`

    def opening(self) -> list[str]:
        return [self.frames.text(self.endpoint.echoed)] if self.endpoint.echoed else []

    def delta(self, delta: Delta) -> str:
        if self.plain:  # nearly every chunk of a stream: the template, not a model per token
            return self.frames.text(delta.text)
        logprobs, self.offset = self.endpoint.wire_logprobs(delta.logprobs, self.offset)
        return self.frames.frame([protocol.CompletionChoice(text=delta.text, logprobs=logprobs)])

    def closing(self, finish: Finish, served: Served | None) -> list[str]:
        kdgate = route_info(served)
        frames = [self.frames.frame([protocol.CompletionChoice(
            text="", finish_reason=finish.finish_reason, stop_reason=finish.stop_reason)], kdgate=kdgate)]
        if self.include_usage:
            frames.append(self.frames.frame([], usage=usage(finish), kdgate=kdgate))
        return frames


def completion_top(entry: TokenLogprob, k: int) -> list[TopLogprob]:
    """vLLM's completions `top_logprobs` for `logprobs: k`: the sampled token, then the top k by rank without it.

    A backend gives the sampled token first and then the top k' >= k (routing may have asked for more than the
    client), so the cut depends on whether the sampled token is among the top k: it is when it is likelier than the
    k-th of the others (then k - 1 of them follow it, else k)."""
    tops = entry.top_logprobs or (TopLogprob(entry.token, entry.logprob, entry.token_id),)
    sampled, others = tops[0], tops[1:]
    if len(others) < k:
        return list(tops)
    if k and sampled.logprob > others[k - 1].logprob:
        return [sampled, *others[:k - 1]]
    return [sampled, *others[:k]]
