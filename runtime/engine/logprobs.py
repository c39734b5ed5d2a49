"""Token logprobs in exactly vLLM's shape (vllm/v1/engine/logprobs.py and the chat serving layer).

- values are raw model logprobs: log_softmax of the logits before `logit_bias`, the penalties, temperature and the
  top-k/top-p/min-p filters (vLLM's default `logprobs_mode="raw_logprobs"`): a token forced by a bias is reported
  with the probability the model itself gave it;
- for each generated token the list is the sampled token first, then the top-k by rank without repeating the
  sampled one, cut to k entries — so when sampling picked a token outside the top-k, the k-th best is dropped
  (the chat API's cut); for a completions request the list is not cut: the sampled token and all of the top-k,
  k + 1 entries when the sampled token is not among them, as vLLM's completions API reports `logprobs: k`;
- `-inf` is reported as -9999.0;
- token strings are each id converted on its own (`convert_ids_to_tokens` then `convert_tokens_to_string`).
"""

from __future__ import annotations

import torch

from runtime.contract import LOGPROB_FLOOR, PromptTokenLogprobs, TokenLogprob, TopLogprob


class TokenTexts:
    """Cached id -> text for logprob entries, as vLLM renders a single token."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            token = self._tokenizer.convert_ids_to_tokens(token_id)
            text = self._tokenizer.convert_tokens_to_string([token]) if token is not None else ""
            self._cache[token_id] = text
        return text


def _clamp(value: float) -> float:
    return max(value, LOGPROB_FLOOR)


def sampled_logprobs(logprobs: torch.Tensor, sampled: torch.Tensor, ks: list[int | None],
                     texts: TokenTexts, completions: list[bool] | None = None) -> list[TokenLogprob | None]:
    """One `TokenLogprob` per row (None where the request asked for no logprobs).

    Args:
        logprobs: (B, V) raw log-softmax of the step's logits.
        sampled: (B,) chosen token ids.
        ks: per row, the number of alternatives asked for (None: no logprobs).
        completions: per row, whether it is a completions request (the sampled token plus the whole top-k).
    """
    wanted = [k for k in ks if k is not None]
    if not wanted:
        return [None] * len(ks)
    top_k = max(wanted)
    sampled_values = logprobs.gather(1, sampled[:, None]).squeeze(1).tolist()  # (B,)
    top_values, top_ids = (logprobs.topk(top_k, dim=-1) if top_k else (None, None))  # (B, k)
    top_values = top_values.tolist() if top_k else None
    top_ids = top_ids.tolist() if top_k else None
    sampled_ids = sampled.tolist()
    rows: list[TokenLogprob | None] = []
    for row, k in enumerate(ks):
        if k is None:
            rows.append(None)
            continue
        token_id, value = sampled_ids[row], _clamp(sampled_values[row])
        uncut = bool(completions and completions[row])
        alternatives = [TopLogprob(texts(token_id), value, token_id)] if k or uncut else []
        for other_id, other_value in zip(top_ids[row][:k] if k else (), top_values[row][:k] if k else (),
                                         strict=True):
            if len(alternatives) >= k and not uncut:
                break
            if other_id != token_id:
                alternatives.append(TopLogprob(texts(other_id), _clamp(other_value), other_id))
        rows.append(TokenLogprob(texts(token_id), value, tuple(alternatives), token_id))
    return rows


def prompt_logprobs(logits: torch.Tensor, prompt_ids: list[int], k: int, texts: TokenTexts
                    ) -> tuple[PromptTokenLogprobs | None, ...]:
    """vLLM's `prompt_logprobs`: None for the first token, then the actual token plus the top-k at each position.

    Args:
        logits: (T, V) logits of the prompt positions (unpadded), position t predicting token t+1.
    """
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)  # (T-1, V)
    targets = torch.tensor(prompt_ids[1:], device=logprobs.device)  # (T-1,)
    actual = logprobs.gather(1, targets[:, None]).squeeze(1)  # (T-1,)
    ranks = (logprobs > actual[:, None]).sum(dim=-1) + 1  # (T-1,)
    top_values, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)  # (T-1, k)
    positions: list[PromptTokenLogprobs | None] = [None]
    for t, token_id in enumerate(prompt_ids[1:]):
        entries = {token_id: (_clamp(actual[t].item()), int(ranks[t].item()), texts(token_id))}
        if k:
            ranked = zip(top_ids[t].tolist(), top_values[t].tolist(), strict=True)
            for rank, (other_id, value) in enumerate(ranked, start=1):
                entries.setdefault(other_id, (_clamp(value), rank, texts(other_id)))
        positions.append(PromptTokenLogprobs(entries))
    return tuple(positions)
