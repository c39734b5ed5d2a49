"""Grammar-constrained decoding with xgrammar, wired as vLLM 0.32 wires it (vllm/v1/structured_output/).

One `GrammarCompiler` per engine, over the model's tokenizer and logits width, with its cache of compiled grammars
(the same text compiles once). Each constrained sequence gets its own `GrammarMatcher`, whose stop tokens are the
model's end tokens plus the request's `stop_token_ids` (vLLM's `all_stop_token_ids`): the answer may end only
where the grammar can. Before anything else sees a step's logits, the rows of unfinished grammars get their token
bitmask applied (disallowed tokens to -inf), so sampling, `logit_bias` and the penalties work on the masked logits
and the reported logprobs are the masked distribution's, as in vLLM's model runner. Once a matcher has accepted a
stop token it is terminated and no longer masks (vLLM fills a full mask); the sequence normally ends on that token.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import torch

from runtime.engine.structured_outputs import GrammarSpec
from runtime.errors import InvalidRequest

log = logging.getLogger(__name__)

CACHE_LIMIT_BYTES = 512 * 2**20  # vLLM's VLLM_XGRAMMAR_CACHE_MB default: compiled grammars kept for reuse
REGEX_TIMEOUT_S = 5.0  # vLLM's VLLM_REGEX_COMPILATION_TIMEOUT_S: a regex whose automaton explodes is refused
COMPILER_THREADS = 8  # as vLLM's XgrammarBackend
_NATIVE_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # "[21:43:32] /project/cpp/x.cc:83: " before xgrammar's words


class Grammars:
    """The engine's grammar compiler: xgrammar is imported and the tokenizer read on the first constrained request,
    so engines that never see one pay nothing. Thread-safe (requests compile on worker threads)."""

    def __init__(self, tokenizer, vocab_size: int, end_token_ids: Collection[int]):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size  # the model's logits width: ids past the tokenizer's own are never allowed
        self._end_token_ids = frozenset(end_token_ids)
        self._compiler = None
        self._lock = threading.Lock()

    def matcher_for(self, spec: GrammarSpec, stop_token_ids: Collection[int] = ()) -> SequenceGrammar:
        """A fresh matcher for one sequence; `InvalidRequest` naming the field when the grammar does not compile."""
        import xgrammar

        compiled = self._compile(spec)
        stops = sorted(self._end_token_ids | set(stop_token_ids))
        return SequenceGrammar(xgrammar.GrammarMatcher(compiled, override_stop_tokens=stops or None))

    def cache_bytes(self) -> int:
        return self._compiler.get_cache_size_bytes() if self._compiler is not None else 0

    def _compile(self, spec: GrammarSpec):
        compiler = self._compiler_once()
        compile_for = {
            # vLLM's options: any whitespace between JSON tokens, the default separators
            "json_schema": lambda source: compiler.compile_json_schema(source, any_whitespace=True, separators=None),
            "regex": lambda source: _with_timeout(compiler.compile_regex, source),
            "ebnf": compiler.compile_grammar,
            "lark": compiler.compile_lark,
        }[spec.kind]
        try:
            return compile_for(spec.source)
        except FutureTimeout as error:
            raise InvalidRequest(f"`{spec.parameter}` took more than {REGEX_TIMEOUT_S:.0f} s to compile (nested "
                                 "quantifiers such as `(a+)+` explode); simplify the pattern",
                                 parameter=spec.parameter) from error
        except (RuntimeError, ValueError, TypeError) as error:  # xgrammar's parse and conversion errors
            what = {"json_schema": "JSON schema", "regex": "regular expression", "ebnf": "grammar",
                    "lark": "Lark grammar"}[spec.kind]
            raise InvalidRequest(f"`{spec.parameter}` is not a valid {what}: {_native_message(error)}",
                                 parameter=spec.parameter) from error

    def _compiler_once(self):
        with self._lock:
            if self._compiler is None:
                import xgrammar

                info = xgrammar.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self._vocab_size)
                self._compiler = xgrammar.GrammarCompiler(info, max_threads=COMPILER_THREADS, cache_enabled=True,
                                                          cache_limit_bytes=CACHE_LIMIT_BYTES)
            return self._compiler


class SequenceGrammar:
    """One sequence's position in its grammar (vLLM's `XgrammarGrammar`)."""

    def __init__(self, matcher):
        self._matcher = matcher
        self.terminated = False

    def fill_mask(self, bitmask: torch.Tensor, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        """Advance by the chosen token; False if the grammar forbids it. After termination every token is let by
        (vLLM ignores them: only `ignore_eos` generates past the end token)."""
        if self.terminated:
            return True
        if not self._matcher.accept_token(token_id):
            return False
        self.terminated = self._matcher.is_terminated()
        return True


def mask_logits(logits: torch.Tensor, grammars: Sequence[SequenceGrammar | None]) -> None:
    """Set to -inf, in place, each constrained row's tokens its grammar does not allow next. Rows without a grammar,
    or whose grammar has terminated, are left as they are; with none to mask this costs nothing.

    Args:
        logits: (B, V) float32 logits of the step, row b for `grammars[b]`.
    """
    rows = [row for row, grammar in enumerate(grammars) if grammar is not None and not grammar.terminated]
    if not rows:
        return
    import xgrammar

    bitmask = xgrammar.allocate_token_bitmask(logits.shape[0], logits.shape[-1])  # (B, ceil(V / 32)) int32, all set
    for row in rows:
        grammars[row].fill_mask(bitmask, row)
    xgrammar.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=rows)


def allows_nothing(masked_row: torch.Tensor) -> bool:
    """Whether a masked row (V,) has no token left: a dead end the request built (its `stop_token_ids` name a token
    the grammar needs as text). Asked only when a row failed, not at every step: it costs a pass over the row."""
    return not bool(torch.isfinite(masked_row).any())


def _with_timeout(compile_regex, pattern: str):
    """vLLM's `compile_regex_with_timeout`: a compilation that runs too long is abandoned (its thread finishes on
    its own) and the request refused."""
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        return executor.submit(compile_regex, pattern).result(timeout=REGEX_TIMEOUT_S)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def _native_message(error: Exception) -> str:
    return _NATIVE_PREFIX.sub("", str(error)).strip()
