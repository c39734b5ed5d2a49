"""Responses serving: a Responses request as one chat-style generation request (its instructions and input as
messages), routed, handed off, shadowed and streamed by the path chat requests take (`gateway.serving`), and
OpenAI's `response` object and event stream.

kdgate keeps no state: the response's id names nothing that can be read back, and `store` is always false.
"""

from __future__ import annotations

import time
import uuid

from gateway.chat.formats import placed as placed_in_response_format
from gateway.chat.serving import route_info, wire_token
from gateway.responses import protocol
from gateway.responses.frames import EventFrames
from gateway.serving import PreparedStream, Served, Serving
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
                                 structured_outputs=request.structured_spec())


class ResponseEndpoint:
    """One Responses request's shapes: the `response` object, and its stream of events."""

    tool_choice = None  # no tools here

    def __init__(self, request: protocol.ResponseRequest, served_model: str):
        self.request = request
        self.model = request.model
        self.response_model = request.model or served_model
        self.created_at = int(time.time())

    def placed(self, error: InvalidRequest) -> InvalidRequest:
        """A schema error named at `text.format.schema...` (chat's names it in `response_format`)."""
        moved = placed_in_response_format(error, response_format=True)
        if moved is error:
            return error
        where = moved.parameter.replace("response_format.json_schema.schema", "text.format.schema", 1)
        return InvalidRequest(str(moved).replace(f"`{moved.parameter}`", f"`{where}`"), parameter=where)

    def shell(self, request_id: str, status: str, output: list[protocol.OutputMessage],
              **fields) -> protocol.ResponseObject:
        """The response object with the request's settings echoed, as OpenAI returns them."""
        request = self.request
        return protocol.ResponseObject(
            id=f"resp_{request_id}", created_at=self.created_at, status=status, instructions=request.instructions,
            max_output_tokens=request.max_output_tokens, model=self.response_model, output=output,
            temperature=request.temperature, top_p=request.top_p, top_logprobs=request.top_logprobs,
            text=request.text.model_dump(by_alias=True, exclude_none=True) if request.text and request.text.format
            else {"format": {"type": "text"}}, metadata=request.metadata or {}, **fields)

    def finished(self, request_id: str, text: str, logprobs: list, finish: Finish, served: Served | None
                 ) -> protocol.ResponseObject:
        incomplete = finish.finish_reason == "length"
        status = "incomplete" if incomplete else "completed"
        message = protocol.OutputMessage(id=f"msg_{request_id}", status=status,
                                         content=[protocol.OutputText(text=text, logprobs=logprobs)])
        return self.shell(request_id, status, [message], usage=usage(finish), kdgate=route_info(served),
                          incomplete_details=protocol.IncompleteDetails(reason="max_output_tokens") if incomplete
                          else None)

    def response(self, request_id: str, text: str, logprobs: list[TokenLogprob], finish: Finish,
                 served: Served | None) -> protocol.ResponseObject:
        return self.finished(request_id, text, self.wire_logprobs(logprobs), finish, served)

    def stream(self, request_id: str, created: int) -> ResponseStream:
        return ResponseStream(self, request_id)

    def wire_logprobs(self, logprobs: list[TokenLogprob]) -> list:
        if not self.request.logprobs():
            return []
        return [wire_token(entry, self.request.top_logprobs or 0) for entry in logprobs]


class ResponseStream:
    """A response's events: created, in progress, the message item and its text part added, text deltas, the text,
    part and item done, and `response.completed` (or `response.incomplete`) with the whole response."""

    def __init__(self, endpoint: ResponseEndpoint, request_id: str):
        self.endpoint = endpoint
        self.request_id = request_id
        self.item_id = f"msg_{request_id}"
        self.frames = EventFrames(self.item_id)
        self.plain = not endpoint.request.logprobs()
        self.text: list[str] = []
        self.logprobs: list = []

    def opening(self) -> list[str]:
        response = self._dump(self.endpoint.shell(self.request_id, "in_progress", []))
        item = {"id": self.item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        return [self.frames.event("response.created", response=response),
                self.frames.event("response.in_progress", response=response),
                self.frames.event("response.output_item.added", output_index=0, item=item),
                self.frames.event("response.content_part.added", item_id=self.item_id, output_index=0,
                                  content_index=0, part=self._dump(protocol.OutputText(text="")))]

    def delta(self, delta: Delta) -> str:
        self.text.append(delta.text)
        if self.plain:  # nearly every event of a stream: the template, not a dict per token
            return self.frames.text_delta(delta.text)
        logprobs = [self._dump(token) for token in self.endpoint.wire_logprobs(delta.logprobs)]
        self.logprobs.extend(logprobs)
        return self.frames.event("response.output_text.delta", item_id=self.item_id, output_index=0,
                                 content_index=0, delta=delta.text, logprobs=logprobs)

    def closing(self, finish: Finish, served: Served | None) -> list[str]:
        response = self.endpoint.finished(self.request_id, "".join(self.text), self.logprobs, finish, served)
        item = response.output[0]
        part = item.content[0]
        kind = "response.incomplete" if response.status == "incomplete" else "response.completed"
        return [self.frames.event("response.output_text.done", item_id=self.item_id, output_index=0,
                                  content_index=0, text=part.text, logprobs=self.logprobs),
                self.frames.event("response.content_part.done", item_id=self.item_id, output_index=0,
                                  content_index=0, part=self._dump(part)),
                self.frames.event("response.output_item.done", output_index=0, item=self._dump(item)),
                self.frames.event(kind, response=self._dump(response))]

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

    @staticmethod
    def _dump(model) -> dict:
        return model.model_dump(mode="json", by_alias=True)


def usage(finish: Finish) -> protocol.ResponseUsage:
    return protocol.ResponseUsage(input_tokens=finish.prompt_tokens, output_tokens=finish.completion_tokens,
                                  total_tokens=finish.prompt_tokens + finish.completion_tokens)
