"""Score a fixed assistant answer: the backend's teacher-forced logprobs (with top-k alternatives) of each token.

Works on any backend through vLLM's `prompt_logprobs` extension: the conversation plus the answer as a final
assistant message is sent with `add_generation_prompt: false, continue_final_message: true, max_tokens: 1,
prompt_logprobs: k, return_token_ids: true`. The answer's tokens are then the tail of the prompt; they are found by
walking back from the end over the decoded prompt tokens until they spell the answer. No tokenizer is needed on the
gateway's side, and the answer is scored in the backend's own tokenization.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from runtime.contract import (
    Backend,
    GenerationRequest,
    PromptTokenLogprobs,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
    collect,
)
from runtime.errors import InvalidRequest, UpstreamProtocolError


@dataclass(frozen=True)
class ScoredAnswer:
    tokens: tuple[TokenLogprob, ...]  # one per answer token: its logprob, then the top-k alternatives by rank
    prompt_tokens: int  # tokens before the answer

    @property
    def total_logprob(self) -> float:
        return sum(token.logprob for token in self.tokens)


async def score_answer(backend: Backend, messages: list[dict], answer: str, top_logprobs: int,
                       tools: tuple[dict, ...] | None = None) -> ScoredAnswer:
    if not answer:
        raise InvalidRequest("cannot score an empty answer", parameter="answer")
    request = GenerationRequest(
        request_id=f"score-{uuid.uuid4().hex}",
        messages=tuple(messages) + ({"role": "assistant", "content": answer},),
        sampling=SamplingParams(max_tokens=1, temperature=0.0),
        add_generation_prompt=False,
        continue_final_message=True,
        prompt_logprobs=top_logprobs,
        tools=tools,  # the template renders them before the conversation, as the answer was generated
    )
    finish = (await collect(backend.generate(request))).finish
    if finish is None or finish.prompt_token_ids is None or finish.prompt_logprobs is None:
        raise UpstreamProtocolError(f"backend `{backend.info.name}` returned no prompt logprobs; a vLLM server "
                                    "needs `prompt_logprobs` and `return_token_ids` support", backend=backend.info.name)
    start = _answer_start(finish.prompt_token_ids, finish.prompt_logprobs, answer, backend.info.name)
    tokens = tuple(_token_entry(token_id, position, top_logprobs)
                   for token_id, position in zip(finish.prompt_token_ids[start:], finish.prompt_logprobs[start:],
                                                 strict=True))
    return ScoredAnswer(tokens=tokens, prompt_tokens=start)


def _answer_start(token_ids, positions, answer: str, backend: str) -> int:
    """Index of the first prompt token of the answer, found from the end by the decoded token texts."""
    suffix = ""
    for index in range(len(token_ids) - 1, 0, -1):
        position = positions[index]
        if position is None or token_ids[index] not in position.entries:
            break
        suffix = (position.entries[token_ids[index]][2] or "") + suffix
        if len(suffix) >= len(answer):
            # Equal: the answer starts on a token boundary. Longer: the first answer token was merged with the text
            # before it, and that token is scored as part of the answer.
            if suffix.endswith(answer):
                return index
            break
    raise UpstreamProtocolError(f"backend `{backend}`: could not find the answer's tokens at the end of the scored "
                                "prompt; its chat template may rewrite the last assistant message", backend=backend)


def _token_entry(token_id: int, position: PromptTokenLogprobs, top_logprobs: int) -> TokenLogprob:
    """The scored token in the same shape as a generated token's logprobs: itself first, then others by rank."""
    logprob, _, text = position.entries[token_id]
    others = sorted(((rank or 0, other_id, value, other_text)
                     for other_id, (value, rank, other_text) in position.entries.items() if other_id != token_id))
    alternatives = [TopLogprob(text or "", logprob, token_id)]
    alternatives += [TopLogprob(other_text or "", value, other_id) for _, other_id, value, other_text in others]
    return TokenLogprob(token=text or "", logprob=logprob, top_logprobs=tuple(alternatives[:top_logprobs]),
                        token_id=token_id)
