"""Chat serving: a chat request as one generation request (`gateway.serving` routes and streams it), and the
chat completion's response and chunk shapes.

The same code serves the gateway (student and teacher behind a routing policy) and `kdgate engine` (one backend,
no routing).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict

from gateway.chat import protocol
from gateway.chat.formats import placed
from gateway.chat.frames import ChunkFrames
from gateway.serving import DataFrames, PreparedStream, Served, Serving, sampling_params
from gateway.tools.calls import ArgumentsPiece, CallStart, CallStream, ContentPiece, Piece, parse
from gateway.tools.grammar import ToolChoice, tool_choice_of
from gateway.tools.protocol import DeltaFunctionCall, DeltaToolCall, FunctionCall, ToolCall
from router.policy import RouteDecision, RouteRequest
from runtime.contract import Delta, Finish, GenerationRequest
from runtime.contract import TokenLogprob as EngineTokenLogprob
from runtime.errors import InvalidRequest


class ChatServing(Serving):
    async def complete(self, request: protocol.ChatCompletionRequest, forced: str | None, started: float
                       ) -> tuple[protocol.ChatCompletionResponse, RouteDecision]:
        generation, route_request = self._prepare(request)
        return await self.complete_with(ChatEndpoint(request, self.served_model), generation, route_request,
                                        forced, started)

    async def stream(self, request: protocol.ChatCompletionRequest, forced: str | None, started: float
                     ) -> PreparedStream:
        generation, route_request = self._prepare(request)
        return await self.stream_with(ChatEndpoint(request, self.served_model), generation, route_request, forced,
                                      started)

    def _prepare(self, request: protocol.ChatCompletionRequest) -> tuple[GenerationRequest, RouteRequest]:
        self.check_model(request.model)
        generation = self._generation_request(request)
        route_request = RouteRequest(request_id=generation.request_id, message_count=len(request.messages),
                                     prompt_chars=sum(len(message["content"]) for message in generation.messages),
                                     model=request.model)
        return generation, route_request

    def _generation_request(self, request: protocol.ChatCompletionRequest) -> GenerationRequest:
        limits = self.limits
        max_tokens = request.requested_max_tokens()
        if max_tokens is not None and max_tokens > limits.max_tokens_limit:
            field = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
            raise InvalidRequest(f"`{field}` must be between 1 and {limits.max_tokens_limit}, got {max_tokens}; "
                                 "lower it or raise `KDGATE_MAX_TOKENS_LIMIT`", parameter=field)
        top_logprobs = None
        if request.logprobs:
            top_logprobs = request.top_logprobs or 0
            if top_logprobs > limits.max_top_logprobs:
                raise InvalidRequest(f"`top_logprobs` must be at most {limits.max_top_logprobs}, got {top_logprobs}; "
                                     "lower it or raise `KDGATE_MAX_TOP_LOGPROBS`", parameter="top_logprobs")
        if request.prompt_logprobs is not None and request.prompt_logprobs > limits.max_top_logprobs:
            raise InvalidRequest(f"`prompt_logprobs` must be at most {limits.max_top_logprobs}",
                                 parameter="prompt_logprobs")
        sampling = sampling_params(request, max_tokens=max_tokens if max_tokens is not None
                                   else limits.default_max_tokens,
                                   fit_to_context=max_tokens is None, top_logprobs=top_logprobs)
        return GenerationRequest(
            request_id=uuid.uuid4().hex,
            messages=tuple(message.to_template() for message in request.messages),
            sampling=sampling,
            add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message,
            prompt_logprobs=request.prompt_logprobs,
            token_ids=request.logprobs and request.return_tokens_as_token_ids,  # else an HTTP backend gives texts
            structured_outputs=request.structured_spec(),
            tools=tuple(tool.model_dump(exclude_none=True) for tool in request.tools) if request.tools else None,
        )


class ChatEndpoint:
    """One chat request's response shapes: `chat.completion` and its chunks (role, content, finish, usage)."""

    def __init__(self, request: protocol.ChatCompletionRequest, served_model: str):
        self.request = request
        self.model = request.model
        self.response_model = request.model or served_model
        self.tool_choice = tool_choice(request)

    def placed(self, error: InvalidRequest) -> InvalidRequest:
        return placed(error, response_format=self.request.structured_outputs is None)

    def finish_reason(self, finish: Finish, called: bool) -> str:
        """`tool_calls` when the answer called tools (OpenAI's and vLLM's), but not for a named function's call
        (OpenAI's `stop` there)."""
        if called and finish.finish_reason == "stop" and self.tool_choice.choice != "function":
            return "tool_calls"
        return finish.finish_reason

    def response(self, request_id: str, text: str, logprobs: list[EngineTokenLogprob], finish: Finish,
                 served: Served | None) -> protocol.ChatCompletionResponse:
        request = self.request
        content, calls = parse(text) if self.tool_choice is not None else (text, [])
        return protocol.ChatCompletionResponse(
            id=f"chatcmpl-{request_id}",
            model=self.response_model,
            choices=[protocol.ChatCompletionChoice(
                message=protocol.AssistantMessage(content=content, tool_calls=[ToolCall(
                    id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments)) for call in calls]),
                logprobs=self.wire_logprobs(logprobs),
                finish_reason=self.finish_reason(finish, bool(calls)),
                stop_reason=finish.stop_reason,
            )],
            usage=usage(finish),
            prompt_logprobs=_wire_prompt_logprobs(finish) if request.prompt_logprobs is not None else None,
            prompt_token_ids=list(finish.prompt_token_ids) if request.return_token_ids and finish.prompt_token_ids
            else None,
            kdgate=route_info(served),
        )

    def stream(self, request_id: str, created: int) -> ChatStream:
        return ChatStream(self, ChunkFrames(f"chatcmpl-{request_id}", created, self.response_model))

    def wire_logprobs(self, logprobs) -> protocol.ChoiceLogprobs | None:
        request = self.request
        if not request.logprobs:
            return None
        keep = request.top_logprobs or 0
        as_ids = request.return_tokens_as_token_ids
        return protocol.ChoiceLogprobs(content=[wire_token(entry, keep, as_ids) for entry in logprobs])


class ChatStream(DataFrames):
    """A chat stream's frames: the role chunk, content chunks, the finish chunk, an optional usage chunk."""

    def __init__(self, endpoint: ChatEndpoint, frames: ChunkFrames):
        self.endpoint = endpoint
        self.frames = frames
        self.plain = not endpoint.request.logprobs
        options = endpoint.request.stream_options
        self.include_usage = bool(options and options.include_usage)
        self.calls = CallStream() if endpoint.tool_choice is not None else None

    def opening(self) -> list[str]:
        return [self.frames.frame([protocol.ChatCompletionChunkChoice(
            delta=protocol.DeltaMessage(role="assistant", content=""))])]

    def delta(self, delta: Delta) -> str:
        if self.calls is not None:
            return self._pieces(self.calls.feed(delta.text), delta.logprobs)
        if self.plain:  # nearly every chunk of a stream: the template, not a model per token
            return self.frames.content(delta.text)
        return self.frames.frame([protocol.ChatCompletionChunkChoice(
            delta=protocol.DeltaMessage(content=delta.text), logprobs=self.endpoint.wire_logprobs(delta.logprobs))])

    def _pieces(self, pieces: list[Piece], logprobs=()) -> str:
        """The chunks of an answer that may call tools: content, a call's start (id and name), its arguments. The
        delta's logprobs go with its first chunk; a delta that makes none (text that may be a tag) has its
        logprobs sent alone, so none are lost."""
        deltas = [protocol.DeltaMessage(content=piece.text) if isinstance(piece, ContentPiece)
                  else protocol.DeltaMessage(tool_calls=[_delta_call(piece)]) for piece in pieces]
        if not deltas and logprobs and not self.plain:
            deltas = [protocol.DeltaMessage()]
        wire = self.endpoint.wire_logprobs(logprobs) if logprobs else None
        return "".join(self.frames.frame([protocol.ChatCompletionChunkChoice(
            delta=delta, logprobs=wire if index == 0 else None)]) for index, delta in enumerate(deltas))

    def closing(self, finish: Finish, served: Served | None) -> list[str]:
        kdgate = route_info(served)
        held = [self._pieces(self.calls.close())] if self.calls is not None else []
        called = self.calls is not None and self.calls.called
        frames = [*filter(None, held), self.frames.frame([protocol.ChatCompletionChunkChoice(
            delta=protocol.DeltaMessage(), finish_reason=self.endpoint.finish_reason(finish, called),
            stop_reason=finish.stop_reason)], kdgate=kdgate)]
        if self.include_usage:
            frames.append(self.frames.frame([], usage=usage(finish), kdgate=kdgate))
        return frames


def tool_choice(request: protocol.ChatCompletionRequest) -> ToolChoice | None:
    """The calls a request's answer may make; None when it makes none (no tools, or `tool_choice: none`)."""
    mode = request.tool_choice_mode()
    if mode == "none":
        return None
    return tool_choice_of([tool.model_dump(exclude_none=True) for tool in request.tools], mode,
                          request.tool_choice.function.name if mode == "function" else None,
                          parallel=request.parallel_tool_calls is not False)


def _delta_call(piece: CallStart | ArgumentsPiece) -> DeltaToolCall:
    if isinstance(piece, CallStart):
        return DeltaToolCall(index=piece.index, id=piece.id, type="function",
                             function=DeltaFunctionCall(name=piece.name, arguments=""))
    return DeltaToolCall(index=piece.index, function=DeltaFunctionCall(arguments=piece.text))


def route_info(served: Served | None) -> protocol.RouteInfo | None:
    return None if served is None else protocol.RouteInfo(**asdict(served))


def usage(finish: Finish) -> protocol.Usage:
    return protocol.Usage(prompt_tokens=finish.prompt_tokens, completion_tokens=finish.completion_tokens,
                          total_tokens=finish.prompt_tokens + finish.completion_tokens)


def wire_token(entry: EngineTokenLogprob, keep: int, as_ids: bool = False) -> protocol.TokenLogprob:
    def text(token: str, token_id: int | None) -> str:
        return f"token_id:{token_id}" if as_ids and token_id is not None else token

    token = text(entry.token, entry.token_id)
    return protocol.TokenLogprob(  # bytes: the token's own text, as vLLM sends them under `token_id:<id>` tokens too
        token=token, logprob=entry.logprob, bytes=list(entry.token.encode("utf-8")),
        top_logprobs=[protocol.TopLogprob(token=(alternative := text(top.token, top.token_id)), logprob=top.logprob,
                                          bytes=list(alternative.encode("utf-8")))
                      for top in entry.top_logprobs[:keep]],
    )


def _wire_prompt_logprobs(finish: Finish) -> list[dict[str, protocol.PromptLogprob] | None] | None:
    if finish.prompt_logprobs is None:
        return None
    return [None if position is None else {
        str(token_id): protocol.PromptLogprob(logprob=logprob, rank=rank, decoded_token=text)
        for token_id, (logprob, rank, text) in position.entries.items()} for position in finish.prompt_logprobs]
