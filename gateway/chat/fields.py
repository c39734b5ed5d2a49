"""Every field of a chat completion request and what kdgate does with it: the one table the rule lives in.

A field is *honoured* (it does what OpenAI's API reference says, or vLLM's for its extensions, on whichever backend
serves the request), *ignored* (accepted because it cannot change the answer: a tag, a cache or latency hint), or
*refused* (a 400 that names it and says what to do). A refused field is accepted only with a value that asks for
nothing kdgate does not do anyway (null, `response_format: {"type": "text"}`, ...). A field the table does not name
is refused too: nothing a client sends is silently dropped.

`ChatCompletionRequest` declares exactly the honoured and ignored fields (so the OpenAPI document lists those and no
other); its `check_fields` validator applies this table to the rest. docs/api.md shows the table; tests hold the
table to the `openai` package's own list of request fields, to the model and to the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Treatment(StrEnum):
    HONOURED = "honoured"
    IGNORED = "ignored"
    REFUSED = "refused"


@dataclass(frozen=True)
class RequestField:
    treatment: Treatment
    what: str  # what kdgate does with it; for a refused field, why and what to do instead (the 400's message)
    origin: str = "openai"  # "openai", or "vllm" for vLLM's extensions to the chat API
    harmless_values: tuple = ()  # a refused field's values (besides null) that ask for nothing: accepted

    def harmless(self, value: Any) -> bool:
        return value is None or value in self.harmless_values


def _honoured(what: str, origin: str = "openai") -> RequestField:
    return RequestField(Treatment.HONOURED, what, origin)


def _ignored(what: str) -> RequestField:
    return RequestField(Treatment.IGNORED, what)


def _refused(what: str, *harmless_values: Any) -> RequestField:
    return RequestField(Treatment.REFUSED, what, harmless_values=harmless_values)


NO_FUNCTIONS = ("`functions` and `function_call` are OpenAI's deprecated form of tools; drop them and send `tools` and "
                "`tool_choice`")
NO_CACHE_HINTS = "a hint for OpenAI's prompt cache: a cache never changes the answer"

# In OpenAI's order (its API reference), then vLLM's extensions in vLLM's.
REQUEST_FIELDS: dict[str, RequestField] = {
    "messages": _honoured("the conversation: `system`, `developer`, `user`, `assistant` (with its `tool_calls`, if "
                          "any) and `tool` messages (with `tool_call_id`) whose content is text (a string or text "
                          "parts), each with its `name` if given (to the chat template, as vLLM does); other parts, "
                          "other roles and other message keys are refused"),
    "model": _honoured("the served model id, or `<model>@<version>` for one student version; another id is a 404"),
    "audio": _refused("kdgate serves text models and cannot answer with audio; drop `audio`"),
    "frequency_penalty": _honoured("subtracted from a token's logit once for each time the answer has it (-2 to 2)"),
    "function_call": _refused(NO_FUNCTIONS),
    "functions": _refused(NO_FUNCTIONS),
    "logit_bias": _honoured("added to the logits of the token ids it names (-100 to 100; ids of the served model's "
                            "tokenizer, others are a 400)"),
    "logprobs": _honoured("each answer token's raw logprob (the model's own, before bias, penalties and temperature)"),
    "max_completion_tokens": _honoured("the answer's token limit (wins over `max_tokens`)"),
    "max_tokens": _honoured("the answer's token limit (deprecated by OpenAI for `max_completion_tokens`)"),
    "metadata": _ignored("tags for OpenAI's stored completions; kdgate stores none for clients to list"),
    "modalities": _refused('kdgate answers with text only; drop `modalities` or send `["text"]`', ["text"]),
    "moderation": _refused("kdgate runs no moderation; drop `moderation` and moderate with a separate call"),
    "n": _honoured("1 only: more choices are a 400, since each would need its own routing decision, handoff and "
                   "shadow record; send separate requests (with different `seed`s)"),
    "parallel_tool_calls": _honoured("whether the answer may call several functions at once (default true); false: "
                                     "at most one call"),
    "prediction": _ignored("a latency hint for OpenAI's predicted outputs: the answer is the same without it"),
    "presence_penalty": _honoured("subtracted once from the logit of every token the answer already has (-2 to 2)"),
    "prompt_cache_key": _ignored(NO_CACHE_HINTS),
    "prompt_cache_options": _ignored(NO_CACHE_HINTS),
    "prompt_cache_retention": _ignored(NO_CACHE_HINTS),
    "reasoning_effort": _refused("the served models do not reason; drop `reasoning_effort`"),
    "response_format": _honoured("`json_schema` (`strict` or not, the answer is a document of the schema; a schema "
                                 "keyword kdgate cannot enforce is a 400 naming it) or `json_object`; kept through "
                                 "escalation and a mid-stream handoff"),
    "safety_identifier": _ignored("an end-user id for OpenAI's abuse detection: it does not change the answer"),
    "seed": _honoured("seeds the request's own sampler: the same seed and parameters give the same answer"),
    "service_tier": _ignored("OpenAI's processing tier (latency and price): kdgate has one, the answer is the same"),
    "stop": _honoured("up to 4 strings; the answer ends before the first one generated (`stop_reason` names it)"),
    "store": _ignored("asks OpenAI to keep the completion for its dashboard; kdgate keeps none for clients to list"),
    "stream": _honoured("server-sent events, ending with `data: [DONE]`"),
    "stream_options": _honoured("`include_usage`: a last chunk with the token counts (other options are ignored)"),
    "temperature": _honoured("0 to 2; below 1e-5 is greedy"),
    "tool_choice": _honoured("`none` (the answer is text), `auto` (text, or text then calls; the default with "
                             "`tools`), `required` (one or more calls) or a named function (one call of it); every "
                             "call is a document of its function's `parameters`, kept through a mid-call handoff"),
    "tools": _honoured("functions the model may call (`type: function`, with a JSON schema of `parameters`; a "
                       "schema keyword kdgate cannot enforce is a 400 naming it); the chat template renders them"),
    "top_logprobs": _honoured("alternatives per answer token, the sampled one first (with `logprobs`)"),
    "top_p": _honoured("nucleus sampling: keep the most likely tokens whose probability adds up to `top_p`"),
    "user": _ignored("an end-user id (OpenAI's, replaced by `safety_identifier` and `prompt_cache_key`): it does "
                     "not change the answer"),
    "verbosity": _refused("kdgate cannot set how verbose the answer is; drop `verbosity` and ask for a length in "
                          "the messages or with `max_completion_tokens`"),
    "web_search_options": _refused("kdgate does not search the web; drop `web_search_options`"),
    # vLLM's extensions (vllm/entrypoints/openai/chat_completion/protocol.py), which the engine server speaks too
    "top_k": _honoured("keep the k most likely tokens when sampling; 0 or -1 keeps all", "vllm"),
    "min_p": _honoured("when sampling, drop tokens less likely than `min_p` times the most likely one (0 to 1)",
                       "vllm"),
    "repetition_penalty": _honoured("for tokens of the prompt or the answer: positive logits divided by it, negative "
                                    "ones multiplied (1e-6 to 1e6; 1 changes nothing)", "vllm"),
    "stop_token_ids": _honoured("generating one of these token ids ends the answer (`stop_reason` is the id, its "
                                "text is left out)", "vllm"),
    "ignore_eos": _honoured("keep generating past the end token until `max_tokens` (for benchmarks)", "vllm"),
    "add_generation_prompt": _honoured("append the assistant turn header after the messages (default true)", "vllm"),
    "continue_final_message": _honoured("continue the last, assistant, message instead of starting a new one",
                                        "vllm"),
    "prompt_logprobs": _honoured("top-k logprobs of every prompt token, for scoring (a key needs the "
                                 "`prompt_logprobs` permission)", "vllm"),
    "return_token_ids": _honoured("`prompt_token_ids` of the rendered prompt in the response (with "
                                  "`prompt_logprobs`, which may be 0; alone it is a 400)", "vllm"),
    "return_tokens_as_token_ids": _honoured("with `logprobs`, each token written `token_id:<id>`", "vllm"),
    "structured_outputs": _honoured("one of `json` (a schema), `json_object`, `regex`, `choice` or `grammar` (EBNF), "
                                    "with `whitespace_pattern`; an answer under a `grammar` is never handed over "
                                    "mid-stream", "vllm"),
}


def fields(treatment: Treatment) -> list[str]:
    return [name for name, field in REQUEST_FIELDS.items() if field.treatment == treatment]


def described(name: str) -> str:
    """The OpenAPI description of an ignored field: that it is accepted and ignored, and why."""
    field = REQUEST_FIELDS[name]
    assert field.treatment == Treatment.IGNORED, name
    return f"Accepted and ignored: {field.what}."


def refusal(body: dict, table: dict[str, RequestField] = REQUEST_FIELDS, api: str = "chat"
            ) -> tuple[str, str] | None:
    """The first field of `body` that kdgate refuses, and the 400's message; None when there is none. `table` and
    `api` name another endpoint's fields (gateway.completions.fields)."""
    unknown = sorted(name for name in body if name not in table)
    if unknown:
        listed = ", ".join(f"`{name}`" for name in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        return unknown[0], (f"{listed} {'is not a field' if len(unknown) == 1 else 'are not fields'} of the {api} "
                            f"API that kdgate knows; remove {'it' if len(unknown) == 1 else 'them'} (docs/api.md "
                            "lists every field kdgate honours, ignores or refuses)")
    for name, value in body.items():
        field = table[name]
        if field.treatment == Treatment.REFUSED and not field.harmless(value):
            return name, f"`{name}` is not supported: {field.what}"
    return None
