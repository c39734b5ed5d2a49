"""Responses serving: a Responses request as one chat-style generation request (its instructions and input as
messages, its tools as chat's), routed, handed off, shadowed and streamed by the path chat requests take
(`gateway.serving`), and OpenAI's `response` object and event stream.

With tools, the answer's calls are parsed out of its text as on chat (gateway/tools): the text before them is the
`message` item (left out when there is none), each call a `function_call` item after it. kdgate keeps no state: the
response's id names nothing that can be read back, and `store` is always false.
"""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel

from gateway.chat.formats import placed as placed_in_response_format
from gateway.chat.serving import route_info, wire_token
from gateway.responses import protocol
from gateway.responses.frames import EventFrames
from gateway.responses.tools import ResponseFunctionToolCall
from gateway.serving import PreparedStream, Served, Serving
from gateway.tools.calls import CallStart, CallStream, ContentPiece, Piece, parse
from gateway.tools.grammar import ToolChoice, tool_choice_of
from router.policy import RouteDecision, RouteRequest
from runtime.contract import Delta, Finish, GenerationRequest, SamplingParams, TokenLogprob
from runtime.errors import GatewayError, InvalidRequest, to_envelope


class ResponseServing(Serving):
    async def complete(self, request: protocol.ResponseRequest, forced: str | None, started: float
                       ) -> tuple[protocol.ResponseObject, RouteDecision]:
        generation, route_request = self._prepare(request)
        return await self.complete_with(ResponseEndpoint(request, self.served_model), generation, route_request,
                                        forced, started)

    async def stream(self, request: protocol.ResponseRequest, forced: str | None, started: float) -> PreparedStream:
        generation, route_request = self._prepare(request)
        return await self.stream_with(ResponseEndpoint(request, self.served_model), generation, route_request,
                                      forced, started)

    def _prepare(self, request: protocol.ResponseRequest) -> tuple[GenerationRequest, RouteRequest]:
        self.check_model(request.model)
        generation = self._generation_request(request)
        route_request = RouteRequest(request_id=generation.request_id, message_count=len(generation.messages),
                                     prompt_chars=sum(len(message["content"]) for message in generation.messages),
                                     model=request.model)
        return generation, route_request

    def _generation_request(self, request: protocol.ResponseRequest) -> GenerationRequest:
        limits = self.limits
        max_tokens = request.max_output_tokens
        if max_tokens is not None and max_tokens > limits.max_tokens_limit:
            raise InvalidRequest(f"`max_output_tokens` must be between 1 and {limits.max_tokens_limit}, got "
                                 f"{max_tokens}; lower it or raise `KDGATE_MAX_TOKENS_LIMIT`",
                                 parameter="max_output_tokens")
        top_logprobs = (request.top_logprobs or 0) if request.logprobs() else None
        if top_logprobs is not None and top_logprobs > limits.max_top_logprobs:
            raise InvalidRequest(f"`top_logprobs` must be at most {limits.max_top_logprobs}, got {top_logprobs}; "
                                 "lower it or raise `KDGATE_MAX_TOP_LOGPROBS`", parameter="top_logprobs")
        sampling = SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else limits.default_max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_logprobs=top_logprobs,
            fit_to_context=max_tokens is None)
        return GenerationRequest(request_id=uuid.uuid4().hex, messages=tuple(request.messages()), sampling=sampling,
                                 structured_outputs=request.structured_spec(), tools=request.template_tools())


class ResponseEndpoint:
    """One Responses request's shapes: the `response` object, and its stream of events."""

    def __init__(self, request: protocol.ResponseRequest, served_model: str):
        self.request = request
        self.model = request.model
        self.response_model = request.model or served_model
        self.created_at = int(time.time())
        self.tool_choice = tool_choice(request)

    def placed(self, error: InvalidRequest) -> InvalidRequest:
        """A schema error named at `text.format.schema...` (chat's names it in `response_format`)."""
        moved = placed_in_response_format(error, response_format=True)
        if moved is error:
            return error
        where = moved.parameter.replace("response_format.json_schema.schema", "text.format.schema", 1)
        return InvalidRequest(str(moved).replace(f"`{moved.parameter}`", f"`{where}`"), parameter=where)

    def shell(self, request_id: str, status: str, output: list[protocol.OutputMessage | ResponseFunctionToolCall],
              **fields) -> protocol.ResponseObject:
        """The response object with the request's settings echoed, as OpenAI returns them."""
        request = self.request
        return protocol.ResponseObject(
            id=f"resp_{request_id}", created_at=self.created_at, status=status, instructions=request.instructions,
            max_output_tokens=request.max_output_tokens, max_tool_calls=request.max_tool_calls,
            model=self.response_model, output=output, parallel_tool_calls=request.parallel_tool_calls is not False,
            temperature=request.temperature, top_p=request.top_p, top_logprobs=request.top_logprobs,
            text=request.text.model_dump(by_alias=True, exclude_none=True) if request.text and request.text.format
            else {"format": {"type": "text"}}, tool_choice=_dumped(request.tool_choice) or "auto",
            tools=[tool.model_dump() for tool in request.tools or ()],
            metadata=request.metadata or {}, **fields)

    def finished(self, request_id: str, output: list[protocol.OutputMessage | ResponseFunctionToolCall], finish: Finish,
                 served: Served | None) -> protocol.ResponseObject:
        incomplete = finish.finish_reason == "length"
        return self.shell(request_id, "incomplete" if incomplete else "completed", output, usage=usage(finish),
                          kdgate=route_info(served),
                          incomplete_details=protocol.IncompleteDetails(reason="max_output_tokens") if incomplete
                          else None)

    def response(self, request_id: str, text: str, logprobs: list[TokenLogprob], finish: Finish,
                 served: Served | None) -> protocol.ResponseObject:
        status = "incomplete" if finish.finish_reason == "length" else "completed"
        wire = self.wire_logprobs(logprobs)
        if self.tool_choice is None:
            return self.finished(request_id, [message(request_id, text, wire, status)], finish, served)
        content, calls = parse(text)
        output: list = [message(request_id, content, wire[:_tokens_within(logprobs, len(content))],
                                "completed" if calls else status)] if content else []
        output += [ResponseFunctionToolCall(id=call_item_id(request_id, index), call_id=call.id, name=call.name,
                                            arguments=call.arguments, status="completed")
                   for index, call in enumerate(calls)]
        return self.finished(request_id, output, finish, served)

    def stream(self, request_id: str, created: int) -> ResponseStream:
        return ResponseStream(self, request_id)

    def wire_logprobs(self, logprobs: list[TokenLogprob]) -> list:
        if not self.request.logprobs():
            return []
        return [wire_token(entry, self.request.top_logprobs or 0) for entry in logprobs]


class ResponseStream:
    """A response's events: created and in progress; per output item, its `added` event, its deltas and its `done`
    events; then `response.completed` (or `response.incomplete`) with the whole response.

    Without tools the one item is the message, added before the first token as OpenAI does. With tools, the answer's
    text is fed to a `CallStream`: the message item opens on the first piece of text, and each call's item on its
    name (closing the item before it), with its arguments as `response.function_call_arguments.delta` events. The
    text always comes first, so the message, when there is one, is item 0.
    """

    def __init__(self, endpoint: ResponseEndpoint, request_id: str):
        self.endpoint = endpoint
        self.request_id = request_id
        self.item_id = f"msg_{request_id}"
        self.frames = EventFrames(self.item_id)
        self.plain = not endpoint.request.logprobs()
        self.calls = CallStream() if endpoint.tool_choice is not None else None
        self.output: list[protocol.OutputMessage | ResponseFunctionToolCall] = []  # the items added so far, in order
        self.open = False  # whether the last of them is still open
        self.text: list[str] = []
        self.logprobs: list = []
        self.held: list[tuple[int, dict]] = []  # (tools) logprobs not yet sent, by where their token starts
        self.call_at: list[int] = []  # (tools) each call's output index
        self.fed = 0  # (tools) characters of the answer fed so far

    def opening(self) -> list[str]:
        response = self._dump(self.endpoint.shell(self.request_id, "in_progress", []))
        frames = [self.frames.event("response.created", response=response),
                  self.frames.event("response.in_progress", response=response)]
        return frames + (self._open_message() if self.calls is None else [])

    def delta(self, delta: Delta) -> str:
        if self.calls is not None:
            return "".join(self._tool_frames(self.calls.feed(delta.text), delta.logprobs))
        self.text.append(delta.text)
        if self.plain:  # nearly every event of a stream: the template, not a dict per token
            return self.frames.text_delta(delta.text)
        logprobs = [self._dump(token) for token in self.endpoint.wire_logprobs(delta.logprobs)]
        self.logprobs.extend(logprobs)
        return self.frames.event("response.output_text.delta", item_id=self.item_id, output_index=0,
                                 content_index=0, delta=delta.text, logprobs=logprobs)

    def closing(self, finish: Finish, served: Served | None) -> list[str]:
        status = "incomplete" if finish.finish_reason == "length" else "completed"
        frames = self._tool_frames(self.calls.close()) if self.calls is not None else []
        if self.open:
            frames += self._close(status)
        response = self.endpoint.finished(self.request_id, self.output, finish, served)
        kind = "response.incomplete" if response.status == "incomplete" else "response.completed"
        return [*frames, self.frames.event(kind, response=self._dump(response))]

    def failure(self, error: GatewayError) -> list[str]:
        """OpenAI's way: an `error` event, then `response.failed` with the response so far."""
        body = to_envelope(error)[1]["error"]
        failed = self.endpoint.shell(self.request_id, "failed", [], error=protocol.ResponseError(
            code="server_error", message=body["message"]))
        return [self.frames.event("error", code=body.get("code") or body.get("type"), message=body["message"],
                                  param=body.get("param")),
                self.frames.event("response.failed", response=self._dump(failed))]

    def ending(self) -> list[str]:
        """Nothing after the last event: a Responses stream sends no `[DONE]`."""
        return []

    # ------------------------------------------------------------------------------------------------ items

    def _open_message(self) -> list[str]:
        self.output.append(protocol.OutputMessage(id=self.item_id, status="in_progress", content=[]))
        self.open = True
        item = {"id": self.item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        return [self.frames.event("response.output_item.added", output_index=0, item=item),
                self.frames.event("response.content_part.added", item_id=self.item_id, output_index=0,
                                  content_index=0, part=self._dump(protocol.OutputText(text="")))]

    def _close(self, status: str) -> list[str]:
        """The `done` events of the last item, which ends with `status`."""
        item, index = self.output[-1], len(self.output) - 1
        item.status = status
        self.open = False
        if isinstance(item, ResponseFunctionToolCall):
            return [self.frames.event("response.function_call_arguments.done", item_id=item.id, output_index=index,
                                      arguments=item.arguments),
                    self.frames.event("response.output_item.done", output_index=index, item=self._dump(item))]
        part = protocol.OutputText(text="".join(self.text), logprobs=self.logprobs)
        item.content = [part]
        return [self.frames.event("response.output_text.done", item_id=self.item_id, output_index=index,
                                  content_index=0, text=part.text, logprobs=self.logprobs),
                self.frames.event("response.content_part.done", item_id=self.item_id, output_index=index,
                                  content_index=0, part=self._dump(part)),
                self.frames.event("response.output_item.done", output_index=index, item=self._dump(item))]

    def _tool_frames(self, pieces: list[Piece], logprobs=()) -> list[str]:
        """The events of an answer that may call tools: its text, each call's start and its arguments. A token's
        logprob goes with the text it starts in; the tokens of the calls have none (as OpenAI's calls)."""
        for entry in self.endpoint.wire_logprobs(list(logprobs)):
            self.held.append((self.fed, self._dump(entry)))
            self.fed += len(entry.token)
        frames = []
        for piece in pieces:
            if isinstance(piece, ContentPiece):
                frames += [] if self.output else self._open_message()
                frames.append(self._text(piece.text))
            elif isinstance(piece, CallStart):
                frames += self._close("completed") if self.open else []
                call = ResponseFunctionToolCall(id=call_item_id(self.request_id, piece.index), call_id=piece.id,
                                                name=piece.name, arguments="", status="in_progress")
                self.call_at.append(len(self.output))
                self.output.append(call)
                self.open = True
                frames.append(self.frames.event("response.output_item.added", output_index=len(self.output) - 1,
                                                item=self._dump(call)))
            else:
                index = self.call_at[piece.index]
                call = self.output[index]
                call.arguments += piece.text
                frames.append(self.frames.event("response.function_call_arguments.delta", item_id=call.id,
                                                output_index=index, delta=piece.text))
        return frames

    def _text(self, text: str) -> str:
        self.text.append(text)
        if self.plain:
            return self.frames.text_delta(text)
        logprobs = [entry for start, entry in self.held if start < self.calls.content_sent]
        self.held = self.held[len(logprobs):]
        self.logprobs.extend(logprobs)
        return self.frames.event("response.output_text.delta", item_id=self.item_id, output_index=0,
                                 content_index=0, delta=text, logprobs=logprobs)

    @staticmethod
    def _dump(model) -> dict:
        return model.model_dump(mode="json", by_alias=True)


def tool_choice(request: protocol.ResponseRequest) -> ToolChoice | None:
    """The calls a request's answer may make, as chat builds them; None when it makes none."""
    mode = request.tool_choice_mode()
    if mode == "none":
        return None
    return tool_choice_of(request.template_tools(), mode, request.tool_choice.name if mode == "function" else None,
                          parallel=request.parallel_tool_calls is not False, max_calls=request.max_tool_calls,
                          where="tools[{index}].parameters")


def _dumped(value: BaseModel | str | None) -> dict | str | None:
    return value.model_dump() if isinstance(value, BaseModel) else value


def message(request_id: str, text: str, logprobs: list, status: str) -> protocol.OutputMessage:
    return protocol.OutputMessage(id=f"msg_{request_id}", status=status,
                                  content=[protocol.OutputText(text=text, logprobs=logprobs)])


def call_item_id(request_id: str, index: int) -> str:
    return f"fc_{request_id}_{index}"


def _tokens_within(logprobs: list[TokenLogprob], length: int) -> int:
    """How many of the answer's first tokens start within its first `length` characters (the text before its
    calls)."""
    start = 0
    for count, entry in enumerate(logprobs):
        if start >= length:
            return count
        start += len(entry.token)
    return len(logprobs)


def usage(finish: Finish) -> protocol.ResponseUsage:
    return protocol.ResponseUsage(input_tokens=finish.prompt_tokens, output_tokens=finish.completion_tokens,
                                  total_tokens=finish.prompt_tokens + finish.completion_tokens)
