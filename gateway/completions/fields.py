"""Every field of a completions request and what kdgate does with it, by the chat table's rule
(`gateway.chat.fields`): honoured, ignored (it cannot change the answer) or refused with a 400 that names it; a field
the table does not name is refused too.

`CompletionRequest` declares exactly the honoured and ignored fields; docs/api.md ("Completions") shows the table;
tests hold it to the `openai` package's own list of completions fields and to vLLM 0.32's `CompletionRequest`.
"""

from __future__ import annotations

from typing import Any

from gateway.chat.fields import REQUEST_FIELDS as CHAT_FIELDS
from gateway.chat.fields import RequestField, Treatment
from gateway.chat.fields import refusal as table_refusal


def _honoured(what: str, origin: str = "openai") -> RequestField:
    return RequestField(Treatment.HONOURED, what, origin)


def _as_chat(name: str) -> RequestField:
    """A sampling field with the same name, range and meaning as chat's (one description, kept in one place)."""
    return CHAT_FIELDS[name]


def _refused(what: str, *harmless_values: Any, origin: str = "openai") -> RequestField:
    return RequestField(Treatment.REFUSED, what, origin, harmless_values=harmless_values)


NO_PROMPT_LOGPROBS = ("kdgate does not return a prompt's own logprobs from /v1/completions: they must come from one "
                      "model, and a mid-stream handoff gives the answer two; drop it (or send the text as an "
                      "assistant message to `POST /v1/chat/completions` with `prompt_logprobs`)")

# In OpenAI's order (the `openai` package's `completion_create_params`), then vLLM's extensions in vLLM's.
REQUEST_FIELDS: dict[str, RequestField] = {
    "model": _as_chat("model"),
    "prompt": _honoured("the text to continue, as is: no chat template, the tokenizer's special tokens (a BOS) added "
                        "as vLLM adds them; a string or a list of one string (token ids and several prompts are a 400: "
                        "send one request per prompt)"),
    "best_of": _refused("kdgate answers with one sample per request (each would need its own routing decision); drop "
                        "`best_of` or send 1, and send separate requests with different `seed`s", 1),
    "echo": _honoured("the prompt, then the completion, in `text` (with `logprobs` it is a 400: the prompt's own "
                      "logprobs are not served)"),
    "frequency_penalty": _as_chat("frequency_penalty"),
    "logit_bias": _as_chat("logit_bias"),
    "logprobs": _honoured("0 to `KDGATE_MAX_TOP_LOGPROBS`: each token's raw logprob, its `text_offset`, and in "
                          "`top_logprobs` the sampled token with the top `logprobs` alternatives, as vLLM fills them"),
    "max_tokens": _honoured("the completion's token limit (16 if not given, as OpenAI's and vLLM's; at most "
                            "`KDGATE_MAX_TOKENS_LIMIT`)"),
    "n": _as_chat("n"),
    "presence_penalty": _as_chat("presence_penalty"),
    "seed": _as_chat("seed"),
    "stop": _as_chat("stop"),
    "stream": _as_chat("stream"),
    "stream_options": _as_chat("stream_options"),
    "suffix": _refused("kdgate does not insert text between a prompt and a suffix; drop `suffix` (an empty one is "
                       "accepted)", ""),
    "temperature": _as_chat("temperature"),
    "top_p": _as_chat("top_p"),
    "user": _as_chat("user"),
    # vLLM's extensions (vllm/entrypoints/openai/completion/protocol.py), which the engine server speaks too
    "top_k": _as_chat("top_k"),
    "min_p": _as_chat("min_p"),
    "repetition_penalty": _as_chat("repetition_penalty"),
    "stop_token_ids": _as_chat("stop_token_ids"),
    "ignore_eos": _as_chat("ignore_eos"),
    "prompt_logprobs": _refused(NO_PROMPT_LOGPROBS, origin="vllm"),
    "response_format": _honoured("`json_schema` or `json_object`, as on the chat API (vLLM takes it on completions "
                                 "too); kept through escalation and a mid-stream handoff", "vllm"),
    "structured_outputs": _as_chat("structured_outputs"),
    "return_tokens_as_token_ids": _honoured("with `logprobs`, each token written `token_id:<id>`", "vllm"),
    "return_token_ids": _refused("kdgate does not return token ids from /v1/completions; drop it, or ask for "
                                 "`logprobs` with `return_tokens_as_token_ids`", False, origin="vllm"),
}


def refusal(body: dict) -> tuple[str, str] | None:
    """The first field of `body` that kdgate refuses on /v1/completions, and the 400's message; None if none."""
    return table_refusal(body, REQUEST_FIELDS, "completions")
