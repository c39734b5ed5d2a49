"""What a chat template is given, as vLLM gives it: every path that renders a conversation (the local engine, the
trainer's prompts) renders the same text that vLLM's server would for the same request.

vLLM hands templates an assistant message's tool-call `arguments` as a dict, not the JSON string of OpenAI's wire
format (the convention of tool-use templates; `vllm/renderers/chat_utils.py::_postprocess_messages`), and drops an
empty `tool_calls` list so the template takes its plain assistant path.
"""

from __future__ import annotations

import json


def template_messages(messages) -> list[dict]:
    """`messages` ready for `apply_chat_template`: copies, with tool-call arguments parsed."""
    return [_message(dict(message)) for message in messages]


def _message(message: dict) -> dict:
    calls = message.get("tool_calls")
    if message.get("role") != "assistant" or calls is None:
        return message
    if not calls:
        message.pop("tool_calls")
        return message
    message["tool_calls"] = [_call(call) for call in calls]
    return message


def _call(call: dict) -> dict:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.loads(arguments)
        except ValueError:
            pass  # left as the client wrote it; the gateway refuses arguments that are not JSON before this point
    return {**call, "function": function}


def render(tokenizer, messages, tools=None, **options) -> str:
    """The prompt text of `messages` (and `tools`, when given) through the tokenizer's chat template."""
    extra = {"tools": list(tools)} if tools else {}
    return tokenizer.apply_chat_template(template_messages(messages), tokenize=False, **extra, **options)
