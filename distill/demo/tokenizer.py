"""The demo tokenizer: byte-level BPE trained on the ticket corpus, digits split into single tokens.

Single-digit tokens let a small model copy an order number digit by digit; byte-level BPE means any text
(unicode, unseen words) still encodes. It is saved as a standard `PreTrainedTokenizerFast` with a chat template,
so `AutoTokenizer.from_pretrained(dir)` and vLLM load it like any Hugging Face tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

# Each message renders as <|role|>content<|end|>; the generation prompt is <|assistant|>. The model ends its answer
# with <|end|>, which is also the eos token, so generation stops where the message does. `continue_final_message`
# (handled by transformers) cuts the render right after the last message's content, which this layout allows.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# The template of the tool-capable demo models (`kdgate demo build --tools`): CHAT_TEMPLATE plus tools, and byte for
# byte CHAT_TEMPLATE's text for a conversation without them. Three additions:
# - `tools` given: `<|system|>Tools:\nname(param, ...)<|end|>` right after bos, one line per tool, names only (the
#   models' context is 512 tokens, and the demo tool explains itself);
# - an assistant message's `tool_calls`, after its content (null content renders nothing), hermes-style, calls
#   separated by a newline: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` (vLLM's `hermes`
#   parser reads it; arguments as the dict that `runtime.chat_template.render` and vLLM hand over, or a JSON string
#   written as it is). No separator after the content, so a call the gateway hands over mid-way as assistant content
#   (`continue_final_message`) renders exactly like the first part of the whole call;
# - a `tool` message is `<|tool|>result<|end|>` like any other role (`<|tool|>` is plain text, not a special token).
TOOL_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}{{ '<|system|>Tools:' }}"
    "{% for tool in tools %}{% set function = tool['function'] if tool['function'] is defined else tool %}"
    "{{ '\\n' + function['name'] + '(' }}"
    "{% if function['parameters'] is defined and function['parameters'] "
    "and function['parameters']['properties'] is defined and function['parameters']['properties'] %}"
    "{{ function['parameters']['properties'] | list | join(', ') }}{% endif %}"
    "{{ ')' }}{% endfor %}{{ eos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] is not none %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
    "{% set function = call['function'] if call['function'] is defined else call %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<tool_call>\\n{\"name\": ' + (function['name'] | tojson) + ', \"arguments\": ' }}"
    "{% if function['arguments'] is string %}{{ function['arguments'] }}{% else %}{{ function['arguments'] | tojson }}"
    "{% endif %}{{ '}\\n</tool_call>' }}"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Train the BPE tokenizer and wrap it as a `PreTrainedTokenizerFast` with the chat template set."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS), padding_side="left",
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def save_tokenizer(tokenizer, directory: Path) -> None:
    tokenizer.save_pretrained(str(directory))
