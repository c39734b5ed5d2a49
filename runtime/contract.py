"""The backend contract: one protocol, two implementations (HTTP to vLLM-compatible servers, the local engine).

A backend turns a `GenerationRequest` into an async stream of `Delta` events (new text and the logprobs of the
tokens that produced it) ending with one `Finish`. Logprobs follow vLLM's conventions exactly: raw model logprobs
(before `logit_bias`, the penalties, temperature and the top-k/top-p/min-p filters: vLLM's default
`--logprobs-mode raw_logprobs`), the sampled token first in `top_logprobs` and then the others by rank, `-inf` reported
as -9999.0. Under a grammar (`structured_outputs`) they are those of the masked distribution, as vLLM applies the
grammar's mask before it computes them: the tokens the grammar allows renormalised among themselves (a forced token
has logprob 0.0), every other token -9999.0 (so `top_logprobs` lists the allowed tokens, then forbidden ones at
-9999.0 when fewer than k are allowed). Closing the stream early (client gone, routing switched backends) cancels the
work upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from router.signals import LOGPROB_FLOOR  # noqa: F401  (declared once, with the routing signals that floor it)

if TYPE_CHECKING:
    from runtime.constraints.languages import Constraint


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen, with vLLM's meaning for each field (`vllm.SamplingParams`); a field at its
    default changes nothing. Logit processing runs in vLLM's order: `logit_bias` is added, then the repetition,
    frequency and presence penalties apply; greedy decoding (temperature 0) takes the argmax of those logits;
    sampling divides them by the temperature, then drops tokens by `min_p`, `top_k` and `top_p`."""

    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no logprobs; 0: the sampled token's only; k: k alternatives
    fit_to_context: bool = False  # max_tokens was a default, not asked for: shrink it to fit the context
    ignore_eos: bool = False  # vLLM's benchmark switch: generate exactly max_tokens
    presence_penalty: float = 0.0  # subtracted once from the logit of every token already generated (-2..2)
    frequency_penalty: float = 0.0  # subtracted per occurrence from the logit of tokens already generated (-2..2)
    repetition_penalty: float = 1.0  # tokens of the prompt or the answer: positive logits / it, negative * it (> 0)
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one (0..1)
    top_k: int = 0  # keep the k most likely tokens; 0 (or vLLM's -1) keeps all
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit), bias in -100..100
    stop_token_ids: tuple[int, ...] = ()  # generating one ends the answer (finish "stop", stop_reason the id)


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    messages: tuple[dict, ...]  # {"role": ..., "content": str}; content parts are joined before this point
    sampling: SamplingParams
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    prompt_logprobs: int | None = None  # vLLM's scoring extension: top-k logprobs of each prompt token
    token_ids: bool = False  # logprobs must carry token ids (an HTTP backend asks vLLM for `token_id:<id>` tokens)
    # vLLM's `structured_outputs` object as its chat API takes it (vLLM 0.32 `StructuredOutputsParams`): exactly one
    # of `json` (a JSON schema, dict or text), `regex`, `choice` (list of str), `grammar` (EBNF or Lark),
    # `json_object: true`. The answer is generated under that grammar from its first token, ending only where the
    # grammar can (runtime.engine.structured_outputs says what the local engine accepts). None: unconstrained.
    structured_outputs: dict | None = None
    # the gateway's compiled form of it (a regular language), kept so that a handoff can give the teacher the
    # grammar of the rest of the answer; backends read `structured_outputs` only
    constraint: Constraint | None = None
    # A raw prompt (vLLM's /v1/completions): `messages` is then empty, no chat template applies, and the backend
    # tokenizes the text as vLLM's completions API does, with the special tokens its tokenizer adds (a BOS, if it has
    # one). Its `sampling.top_logprobs=k` has that API's meaning: the sampled token first, then the top k by rank
    # without repeating it (k entries, or k + 1 when the sampled token is not among the top k). `prompt_logprobs` is
    # for chat requests only.
    prompt: str | None = None
    # The tools the chat template renders into the prompt (OpenAI's `tools`: {"type": "function", "function":
    # {"name", "description", "parameters"}}). A backend only renders them: calls come back as text in the
    # template's format (hermes, `<tool_call>{"name": ..., "arguments": ...}</tool_call>`) and the gateway parses it
    # (gateway/tools), so that it can hand a call over mid-arguments. None: no tools.
    tools: tuple[dict, ...] | None = None


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    token_id: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top_logprobs: tuple[TopLogprob, ...] = ()
    token_id: int | None = None


@dataclass(frozen=True)
class PromptTokenLogprobs:
    """vLLM's `prompt_logprobs` entry for one prompt position: token id -> (logprob, rank, decoded text)."""

    entries: dict[int, tuple[float, int | None, str | None]]


@dataclass(frozen=True)
class Delta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finish:
    finish_reason: str  # "stop" | "length" | "abort"
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str | int | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    prompt_logprobs: tuple[PromptTokenLogprobs | None, ...] | None = None


Event = Delta | Finish


@dataclass(frozen=True)
class BackendInfo:
    name: str  # the role it plays: "student", "teacher", or "engine"
    model: str  # the model id it serves
    kind: str  # "local" | "http"
    max_model_len: int | None = None
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Collected:
    text: str
    logprobs: tuple[TokenLogprob, ...]
    finish: Finish | None  # None when the stream ended without one


async def collect(events: AsyncIterator[Event]) -> Collected:
    """A whole answer from a backend's event stream: for work off the request path (shadow, data, evaluation)."""
    text: list[str] = []
    logprobs: list[TokenLogprob] = []
    finish = None
    async for event in events:
        if isinstance(event, Delta):
            text.append(event.text)
            logprobs.extend(event.logprobs)
        else:
            finish = event
    return Collected("".join(text), tuple(logprobs), finish)


@runtime_checkable
class Backend(Protocol):
    info: BackendInfo

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Stream the completion. Raises a `runtime.errors.GatewayError` on failure, before or during the stream."""
        ...

    async def score(self, messages: list[dict], answer: str, top_logprobs: int, tools: tuple[dict, ...] | None = None):
        """Teacher-forced logprobs of `answer` as the assistant's reply (`runtime.backends.scoring.ScoredAnswer`)."""
        ...

    async def check_ready(self) -> None:
        """Return when the backend can serve; raise `UpstreamUnavailable` (with the reason) when it cannot."""
        ...

    async def aclose(self) -> None: ...
