"""Every field of a Responses request and what kdgate does with it, by the chat table's rule
(`gateway.chat.fields`): honoured, ignored (it cannot change the answer) or refused with a 400 that names it; a field
the table does not name is refused too.

kdgate's Responses API is stateless: nothing is stored, so what reads or writes server-side state (`store: true`,
`previous_response_id`, `conversation`, `background`) is refused rather than silently dropped. `ResponseRequest`
declares exactly the honoured and ignored fields; docs/api.md ("Responses") shows the table; tests hold it to the
`openai` package's own list of Responses fields.
"""

from __future__ import annotations

from typing import Any

from gateway.chat.fields import NO_CACHE_HINTS, RequestField, Treatment
from gateway.chat.fields import REQUEST_FIELDS as CHAT_FIELDS
from gateway.chat.fields import refusal as table_refusal


def _honoured(what: str) -> RequestField:
    return RequestField(Treatment.HONOURED, what)


def _ignored(what: str) -> RequestField:
    return RequestField(Treatment.IGNORED, what)


def _refused(what: str, *harmless_values: Any) -> RequestField:
    return RequestField(Treatment.REFUSED, what, harmless_values=harmless_values)


STATELESS = ("kdgate's Responses API is stateless and keeps no responses or conversations; drop `{name}` and send "
             "the whole conversation in `input`")

# In the `openai` package's order (`response_create_params`), with `stream` (its streaming variant's) in OpenAI's
# API reference place.
REQUEST_FIELDS: dict[str, RequestField] = {
    "access_programs": _refused("kdgate has no access programs; drop `access_programs`"),
    "background": _refused("kdgate answers in the request (a background response would need a stored one to poll); "
                           "drop `background` or send false", False),
    "background_options": _refused("kdgate runs no background responses; drop `background_options`"),
    "context_management": _refused("kdgate does not compact a conversation; drop `context_management`"),
    "conversation": _refused(STATELESS.format(name="conversation")),
    "image": _refused("kdgate serves text models and makes no images; drop `image`"),
    "include": _honoured('`["message.output_text.logprobs"]` only: each answer token\'s raw logprob in the '
                         "`output_text` part and the delta events (with `top_logprobs` alternatives); other values "
                         "are a 400 naming them"),
    "input": _honoured("a string (one user message), or a list of items: messages (`role` `user`, `system`, "
                       "`developer` or `assistant`, `content` a string or `input_text`/`output_text` parts), "
                       "`function_call` items (an earlier answer's calls: the assistant's `tool_calls`, joined to "
                       "the assistant message before them) and `function_call_output` items (`call_id` and the "
                       "`output` string: `tool` messages); other items (reasoning, item references, hosted tools' "
                       "calls) and parts (images, files, audio) are a 400 naming them"),
    "instructions": _honoured("a system message put before `input`"),
    "max_output_tokens": _honoured("the answer's token limit (at most `KDGATE_MAX_TOKENS_LIMIT`); an answer that "
                                   "reaches it has `status: \"incomplete\"`, `incomplete_details.reason: "
                                   "\"max_output_tokens\"`"),
    "max_tool_calls": _honoured("at most this many calls in the answer (1 or more; the calls' grammar allows no "
                                "more); a bound whose grammar would be too big for the tools' parameters is a 400 "
                                "that says how far to lower it"),
    "metadata": _ignored("tags for OpenAI's stored responses; kdgate stores none, it echoes them in the response"),
    "model": CHAT_FIELDS["model"],
    "moderation": _refused("kdgate runs no moderation; drop `moderation` and moderate with a separate call"),
    "parallel_tool_calls": _honoured("whether the answer may call several functions at once (default true); "
                                     "false: at most one call"),
    "previous_response_id": _refused(STATELESS.format(name="previous_response_id")),
    "prompt": _refused("kdgate has no stored prompt templates; drop `prompt` and send the text in `instructions` "
                       "and `input`"),
    "prompt_cache_key": _ignored(NO_CACHE_HINTS),
    "prompt_cache_options": _ignored(NO_CACHE_HINTS),
    "prompt_cache_retention": _ignored(NO_CACHE_HINTS),
    "reasoning": _refused("the served models do not reason; drop `reasoning`"),
    "safety_identifier": CHAT_FIELDS["safety_identifier"],
    "service_tier": CHAT_FIELDS["service_tier"],
    # OpenAI stores a response unless told not to. kdgate refuses an explicit `store: true` rather than ignore it:
    # the client means to read the response back (`previous_response_id`, GET), which would then fail far from the
    # cause. Left out, nothing is asked for and nothing is stored (docs/api.md says so).
    "store": _refused("kdgate's Responses API is stateless and stores no response to read back; drop `store` or "
                      "send false", False),
    "stream": _honoured("server-sent events of the Responses API (`event: <type>` and `data: <json>`, numbered by "
                        "`sequence_number`), ending with `response.completed`, `response.incomplete` or "
                        "`response.failed`"),
    "stream_options": _ignored("`include_obfuscation` pads OpenAI's delta events against side channels; kdgate "
                               "adds no padding, and the answer is the same"),
    "temperature": CHAT_FIELDS["temperature"],
    "text": _honoured("`format`: `text`, `json_object` or `json_schema` (`name`, `schema`, `strict`: the answer is a "
                      "document of the schema, kept through escalation and a mid-stream handoff, as chat's "
                      "`response_format`); `verbosity` only `medium`"),
    "tool_choice": _honoured('`none`, `auto` (the default: text, or text then calls), `required` (one or more '
                             'calls) or `{"type": "function", "name": ...}` (one call of it), as on chat; other forms '
                             "(`allowed_tools`, hosted tools, MCP, custom) are a 400"),
    "tools": _honoured('function tools, `{"type": "function", "name", "description", "parameters", "strict"}`: '
                       "rendered by the chat template, and every call the answer makes is a document of its "
                       "function's `parameters`, as on chat; other tool types (web search, file search, MCP, code "
                       "interpreter, custom, ...) are a 400 naming `tools[i].type`: kdgate runs no tools"),
    "top_logprobs": _honoured("0 to `KDGATE_MAX_TOP_LOGPROBS` alternatives per token, with `include: "
                              "[\"message.output_text.logprobs\"]`"),
    "top_p": CHAT_FIELDS["top_p"],
    "truncation": _refused("kdgate does not drop the start of a conversation to fit the context; drop `truncation` "
                           "or send `disabled` (a conversation too long is a 400)", "disabled"),
    "user": CHAT_FIELDS["user"],
}


def refusal(body: dict) -> tuple[str, str] | None:
    """The first field of `body` that kdgate refuses on /v1/responses, and the 400's message; None if none."""
    return table_refusal(body, REQUEST_FIELDS, "Responses")
