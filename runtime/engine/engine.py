"""The local engine: a `transformers` causal LM served in-process with step-level continuous batching.

One background thread owns the model. Each loop iteration admits waiting requests (their prompts are prefilled
together and their cache rows join the running batch), then runs one decode step for every running sequence at once
and routes each row's new token to its request's asyncio queue. A request that is cancelled (client gone, routing
switched) leaves the batch at the next step. Logprobs follow vLLM's conventions (see `runtime.engine.logprobs`).
A request with `structured_outputs` has its rows masked by its grammar before sampling, as vLLM's model runner does
(`runtime.engine.grammar`); the others in the batch are untouched.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from runtime.chat_template import render
from runtime.contract import Delta, Event, Finish, GenerationRequest
from runtime.engine.batch import RunningBatch
from runtime.engine.grammar import Grammars, SequenceGrammar, allows_nothing, mask_logits
from runtime.engine.logprobs import TokenTexts, prompt_logprobs, sampled_logprobs
from runtime.engine.sampling import RowSampling, make_generator, sample_next
from runtime.engine.structured_outputs import grammar_spec
from runtime.engine.text import IncrementalDetokenizer, StopStringBuffer
from runtime.errors import EngineFailure, InvalidRequest, Overloaded

log = logging.getLogger(__name__)
MAX_CHARS_PER_TOKEN = 64  # no real tokenizer's token is longer: more characters than this per context token is over


@dataclass(frozen=True)
class EngineSettings:
    model_dir: Path
    device: str = "auto"  # "auto" picks cuda when present, else cpu
    dtype: str = "auto"  # "auto": bfloat16 on CUDA with bf16 support, float32 otherwise
    max_batch_size: int = 32  # sequences decoded together; more arrivals wait for a free row
    max_waiting: int = 1024  # arrivals waiting for a row; beyond it a request is refused (503) at once
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    adapter_dir: Path | None = None  # a peft LoRA adapter over `model_dir`, merged into these weights at load
    # vLLM's --stream-interval: after the first token, what this many decode steps released goes out as one event
    # (what is left, with the finish), as a busy vLLM packs several tokens per chunk on its own. 1 (the default):
    # one event per step.
    stream_interval: int = 1


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    generator: torch.Generator | None
    detokenizer: IncrementalDetokenizer
    stops: StopStringBuffer
    grammar: SequenceGrammar | None = None  # its structured-outputs matcher; None: unconstrained
    output_ids: list[int] = field(default_factory=list)
    prompt_entries: tuple | None = None  # its prompt logprobs, computed at prefill, sent with the Finish
    cancelled: bool = False
    finished: bool = False

    def emit(self, event: Event | Exception) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class LocalEngine:
    def __init__(self, settings: EngineSettings):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.device = torch.device("cuda" if settings.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if settings.device == "auto" else settings.device))
        self.dtype = _resolve_dtype(settings.dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(settings.model_dir))
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{settings.model_dir} has no chat template; the engine serves chat models only")
        try:
            self.model = AutoModelForCausalLM.from_pretrained(str(settings.model_dir), dtype=self.dtype)
            if settings.adapter_dir is not None:
                self.model = merged_adapter(self.model, settings.adapter_dir)
        except (OSError, ValueError):
            raise
        except Exception as error:  # safetensors' SafetensorError, torch's size mismatch: the files are unusable
            raise ValueError(f"the weights in {settings.adapter_dir or settings.model_dir} cannot be loaded "
                             f"({type(error).__name__}: {error}); copy the checkpoint again") from error
        self.model.to(self.device).eval()
        _refuse_sliding_window(self.model.config, settings.model_dir)
        self.max_model_len = int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        self.vocab_size = int(self.model.config.get_text_config().vocab_size)  # vLLM's bound on token ids in requests
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.texts = TokenTexts(self.tokenizer)
        self.grammars = Grammars(self.tokenizer, _logits_width(self.model, self.vocab_size), self.eos_ids)

        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._prefilling: list[_Sequence] = []  # taken from the queue, not yet in the batch: failed with it
        self._batch = RunningBatch()
        self._wake = threading.Condition()
        self._stopping = False
        self._open = 0  # generate() calls not yet returned (counted on the event loop's thread)
        self.step_count = 0
        self.decoded_tokens = 0  # summed batch sizes: decoded_tokens / step_count is the mean batch size
        self.recent_steps: deque[tuple[int, tuple[str, ...]]] = deque(maxlen=4096)  # (step, request ids decoded)
        self._thread = threading.Thread(target=self._loop, name="kdgate-engine", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------------- request side

    def encode_prompt(self, request: GenerationRequest) -> tuple[list[int], int]:
        """The prompt's token ids and the max_tokens that applies (a default one shrinks to fit the context)."""
        text, special_tokens = self.prompt_text(request)
        field, are = ("prompt", "is") if request.prompt is not None else ("messages", "are")
        if len(text) > self.max_model_len * MAX_CHARS_PER_TOKEN:  # surely too long: refused before tokenizing it
            raise InvalidRequest(
                f"the {field} {are} {len(text):,} characters, far beyond this model's maximum context length of "
                f"{self.max_model_len} tokens; shorten {'it' if are == 'is' else 'them'}", parameter=field)
        ids = self.tokenizer(text, add_special_tokens=special_tokens)["input_ids"]
        max_tokens = request.sampling.max_tokens
        if request.sampling.fit_to_context:
            max_tokens = max(1, min(max_tokens, self.max_model_len - len(ids)))
        total = len(ids) + max_tokens
        if total > self.max_model_len:
            raise InvalidRequest(
                f"this model's maximum context length is {self.max_model_len} tokens; the request needs {total} "
                f"({len(ids)} in the {field}, {max_tokens} in the completion). Shorten the "
                f"{field} or lower `max_tokens`.", parameter="max_tokens")
        return ids, max_tokens

    def prompt_text(self, request: GenerationRequest) -> tuple[str, bool]:
        """The text to tokenize, and whether the tokenizer adds its special tokens to it: a raw prompt is tokenized
        as vLLM's completions API does (with them, so a BOS if the tokenizer has one), a rendered chat template
        without them (the template writes its own)."""
        if request.prompt is not None:
            return request.prompt, True
        return render(self.tokenizer, request.messages, request.tools,
                      add_generation_prompt=request.add_generation_prompt,
                      continue_final_message=request.continue_final_message), False

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self._open += 1
        events = self._generate(request)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # a consumer that left early cancels the sequence now, not at garbage collection
            self._open -= 1

    def idle(self) -> bool:
        """No request is being generated, or about to be (closing now would fail none)."""
        return self._open == 0

    def check_token_ids(self, request: GenerationRequest) -> None:
        """Token ids a request names (`logit_bias`, `stop_token_ids`) must be in the vocabulary, as vLLM checks."""
        sampling = request.sampling
        for parameter, ids in (("logit_bias", [token_id for token_id, _ in sampling.logit_bias]),
                               ("stop_token_ids", sampling.stop_token_ids)):
            outside = sorted({token_id for token_id in ids if not 0 <= token_id < self.vocab_size})
            if outside:
                raise InvalidRequest(
                    f"`{parameter}` names token ids outside this model's vocabulary: {outside[:5]} (ids run from 0 "
                    f"to {self.vocab_size - 1}); use ids of the served model's tokenizer", parameter=parameter)

    def grammar_for(self, request: GenerationRequest) -> SequenceGrammar:
        """The matcher of a request's `structured_outputs` (compiled, or from the compiler's cache); `InvalidRequest`
        naming the field when the constraint is wrong. Its grammar starts at the first generated token, also under
        `continue_final_message`, as vLLM's does."""
        return self.grammars.matcher_for(grammar_spec(request.structured_outputs),
                                         stop_token_ids=request.sampling.stop_token_ids)

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.check_token_ids(request)
        grammar = None
        if request.structured_outputs is not None:  # compiling can take milliseconds: off the event loop
            grammar = await asyncio.to_thread(self.grammar_for, request)
        prompt_ids, max_tokens = await asyncio.to_thread(self.encode_prompt, request)
        if not self._thread.is_alive():
            raise EngineFailure("the engine thread has stopped; restart the server")
        sequence = _Sequence(
            request=request, prompt_ids=prompt_ids, max_tokens=max_tokens, loop=asyncio.get_running_loop(),
            queue=asyncio.Queue(),
            generator=make_generator(request.sampling.seed, self.device),
            detokenizer=IncrementalDetokenizer(self.tokenizer, prompt_ids[-4:]),
            stops=StopStringBuffer(request.sampling.stop),
            grammar=grammar,
        )
        with self._wake:
            if len(self._waiting) >= self.settings.max_waiting:
                raise Overloaded(f"the local engine has {len(self._waiting)} requests waiting for a batch row; "
                                 "retry shortly", retry_after=1.0)
            self._waiting.append(sequence)
            self._wake.notify()
        try:
            packs = _Packs(self.settings.stream_interval)
            while True:
                event = await sequence.queue.get()
                if isinstance(event, Exception):
                    raise event
                for ready in packs.push(event):
                    yield ready
                if isinstance(event, Finish):
                    return
        finally:
            if not sequence.finished:
                sequence.cancelled = True
                with self._wake:
                    self._wake.notify()

    def stats(self) -> dict:
        return {"running": len(self._running), "waiting": len(self._waiting), "steps": self.step_count,
                "decoded_tokens": self.decoded_tokens}

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def shutdown(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=10)

    # ----------------------------------------------------------------------------------------- engine thread

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._stopping and not self._waiting and not self._running:
                        self._wake.wait()
                    if self._stopping:
                        break
                    arrivals = self._take_arrivals()
                    self._prefilling = arrivals
                try:
                    if arrivals:
                        self._prefill_or_fail_arrivals(arrivals)
                    self._prefilling = []
                    if self._running:
                        self._decode_step()
                except Exception as exc:  # the running batch is lost: fail its requests, serve the waiting ones
                    log.exception("engine step failed")
                    self._fail_all(EngineFailure(f"the local engine failed: {type(exc).__name__}: {exc}"),
                                   waiting_too=False)
        self._fail_all(EngineFailure("the engine is shutting down"))

    def _prefill_or_fail_arrivals(self, arrivals: list[_Sequence]) -> None:
        """Prefill; a failure before the arrivals joined the running batch fails them alone (the batch's cache is
        untouched until they join), one after it loses the batch (re-raised)."""
        try:
            self._prefill(arrivals)
        except Exception as exc:
            joined = self._batch.size != len(self._running) or any(s in self._running for s in arrivals)
            if joined:
                raise
            log.exception("prefill of %d requests failed", len(arrivals))
            error = EngineFailure(f"the local engine failed: {type(exc).__name__}: {exc}")
            for sequence in arrivals:
                if not sequence.finished:
                    sequence.finished = True
                    sequence.emit(error)

    def _take_arrivals(self) -> list[_Sequence]:
        free = self.settings.max_batch_size - len(self._running)
        arrivals = []
        while self._waiting and len(arrivals) < free:
            sequence = self._waiting.popleft()
            if not sequence.cancelled:
                arrivals.append(sequence)
        return arrivals

    def _prefill(self, arrivals: list[_Sequence]) -> None:
        length = max(len(s.prompt_ids) for s in arrivals)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(arrivals), length), pad, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(arrivals), length), dtype=torch.long)  # (B, T)
        for row, sequence in enumerate(arrivals):
            input_ids[row, length - len(sequence.prompt_ids):] = torch.tensor(sequence.prompt_ids)
            attention_mask[row, length - len(sequence.prompt_ids):] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        # Logits of the last position only, unless a request scores its prompt: (B, T, V) floats can be gigabytes.
        wants_prompt_logprobs = any(s.request.prompt_logprobs is not None for s in arrivals)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=True, logits_to_keep=0 if wants_prompt_logprobs else 1)
        logits = output.logits.float()  # (B, T or 1, V)
        for row, sequence in enumerate(arrivals):
            k = sequence.request.prompt_logprobs
            if k is not None:
                sequence.prompt_entries = prompt_logprobs(logits[row, length - len(sequence.prompt_ids):],
                                                          sequence.prompt_ids, k, self.texts)
        positions = attention_mask.sum(dim=1)  # (B,)
        next_tokens = self._sample_and_emit(arrivals, logits[:, -1, :])
        self._batch.add(output.past_key_values, attention_mask, positions, next_tokens)
        self._running.extend(arrivals)
        self._retire_finished()

    def _decode_step(self) -> None:
        self.step_count += 1
        self.decoded_tokens += len(self._running)
        self.recent_steps.append((self.step_count, tuple(s.request.request_id for s in self._running)))
        output = self.model(**self._batch.step_inputs())
        self._batch.cache = output.past_key_values
        self._batch.positions = self._batch.positions + 1
        self._batch.next_tokens = self._sample_and_emit(self._running, output.logits[:, -1, :].float())
        self._retire_finished()

    def _sample_and_emit(self, sequences: list[_Sequence], logits: torch.Tensor) -> torch.Tensor:
        """Choose each row's next token, stream its text and logprobs, and mark rows that are done. (B, V) -> (B,)

        Constrained rows are masked first, in place: everything after (sampling, the logprobs) sees masked logits."""
        mask_logits(logits, [s.grammar for s in sequences])
        sampling = [s.request.sampling for s in sequences]
        failures: dict[int, Exception] = {}
        chosen = sample_next(logits, [RowSampling(s.request.sampling, s.prompt_ids, s.output_ids, s.generator)
                                      for s in sequences], failures)
        for row, error in failures.items():  # that request's parameters broke its own sampling: it alone fails
            if self._fail_at_grammar_dead_end(sequences[row], logits[row]):  # nothing to sample from: the grammar's
                continue
            log.warning("request %s: sampling failed (%s: %s)", sequences[row].request.request_id,
                        type(error).__name__, error)
            sequences[row].finished = True
            sequences[row].emit(InvalidRequest(f"sampling failed with these parameters ({type(error).__name__}: "
                                               f"{error}); check `temperature`, `top_p` and the other sampling "
                                               "fields", parameter="top_p"))
        raw_logprobs = torch.log_softmax(logits, dim=-1)  # (B, V)
        entries = sampled_logprobs(raw_logprobs, chosen, [p.top_logprobs for p in sampling], self.texts,
                                   completions=[s.request.prompt is not None for s in sequences])
        for row, (sequence, token_id) in enumerate(zip(sequences, chosen.tolist(), strict=True)):
            if sequence.finished:  # its sampling failed above
                continue
            if sequence.cancelled:
                sequence.finished = True
                continue
            sequence.output_ids.append(token_id)
            if sequence.grammar is not None and not sequence.grammar.accept(token_id):  # a masked token was chosen
                if not self._fail_at_grammar_dead_end(sequence, logits[row]):
                    log.error("request %s: its grammar rejected token %d", sequence.request.request_id, token_id)
                    sequence.finished = True
                    sequence.emit(EngineFailure("the local engine chose a token the request's grammar forbids; this "
                                                "is a bug, please report it"))
                continue
            try:
                self._advance(sequence, token_id, entries[row])
            except Exception as exc:  # one sequence's failure (say, detokenizing) must not fail the batch
                log.exception("request %s failed", sequence.request.request_id)
                sequence.finished = True
                sequence.emit(EngineFailure(f"the local engine failed on this request: {type(exc).__name__}: {exc}"))
        return chosen

    def _fail_at_grammar_dead_end(self, sequence: _Sequence, masked_row: torch.Tensor) -> bool:
        """Fail the sequence, the client's fault, if its grammar allowed no token at all (V,); vLLM 0.32 samples a
        forbidden token there and answers 500. False (nothing done) otherwise."""
        if sequence.grammar is None or not allows_nothing(masked_row):
            return False
        sequence.finished = True
        sequence.emit(InvalidRequest(
            "the grammar of `structured_outputs` allows no token here: the token it needs is one of `stop_token_ids` "
            "(those may only end the answer), or the vocabulary cannot spell it; remove that id from "
            "`stop_token_ids` or change the grammar", parameter="structured_outputs"))
        return True

    def _advance(self, sequence: _Sequence, token_id: int, entry) -> None:
        sampling = sequence.request.sampling
        is_eos = token_id in self.eos_ids and not sampling.ignore_eos
        is_stop_token = not is_eos and token_id in sampling.stop_token_ids  # vLLM checks the end token first
        piece = "" if is_eos or is_stop_token else sequence.detokenizer.push(token_id)  # vLLM drops its text too
        released = sequence.stops.push(piece, entry)
        reason, stop_reason = None, None
        if released.stop is not None:
            reason, stop_reason = "stop", released.stop
        elif is_eos:
            reason = "stop"
        elif is_stop_token:
            reason, stop_reason = "stop", token_id
        elif len(sequence.output_ids) >= sequence.max_tokens:
            reason = "length"
        if reason is not None:
            tail = sequence.stops.flush() if released.stop is None else None
            if tail is not None:
                released.text += tail.text
                released.logprobs += tail.logprobs
        if released.text or released.logprobs:
            sequence.emit(Delta(text=released.text, logprobs=tuple(released.logprobs)))
        if reason is not None:
            sequence.finished = True
            sequence.emit(Finish(
                finish_reason=reason, stop_reason=stop_reason, prompt_tokens=len(sequence.prompt_ids),
                completion_tokens=len(sequence.output_ids),
                prompt_token_ids=tuple(sequence.prompt_ids) if sequence.request.prompt_logprobs is not None else None,
                prompt_logprobs=sequence.prompt_entries,
            ))

    def _retire_finished(self) -> None:
        keep = [row for row, sequence in enumerate(self._running) if not sequence.finished]
        if len(keep) != len(self._running):
            self._running = [self._running[row] for row in keep]
            self._batch.keep(keep)

    def _fail_all(self, error: Exception, waiting_too: bool = True) -> None:
        """Fail the prefilling and running sequences, and the waiting ones unless `waiting_too` is off."""
        with self._wake:
            doomed = list(self._prefilling) + list(self._running) + (list(self._waiting) if waiting_too else [])
            if waiting_too:
                self._waiting.clear()
        for sequence in doomed:
            if not sequence.finished:
                sequence.finished = True
                sequence.emit(error)
        self._prefilling = []
        self._running = []
        self._batch = RunningBatch()



class _Packs:
    """vLLM's stream interval: the first token goes alone, later ones in packs of `interval` (as `Delta`s joined
    into one), and what is held when the `Finish` comes goes just before it."""

    def __init__(self, interval: int):
        self._interval = interval
        self._held: list[Delta] = []
        self._sent_any = False

    def push(self, event: Event) -> list[Event]:
        if isinstance(event, Finish):
            return [*self._flush(), event]
        if self._interval <= 1 or not self._sent_any:
            self._sent_any = True
            return [event]
        self._held.append(event)
        return self._flush() if len(self._held) >= self._interval else []

    def _flush(self) -> list[Event]:
        held, self._held = self._held, []
        if not held:
            return []
        return [Delta(text="".join(delta.text for delta in held),
                      logprobs=tuple(entry for delta in held for entry in delta.logprobs))]


def merged_adapter(model, adapter_dir: Path):
    """The base model with a peft LoRA adapter merged in: one set of weights, served at the base model's speed."""
    try:
        from peft import PeftModel
    except ImportError as error:
        raise ValueError("serving a LoRA adapter needs peft (`pip install -e .[train]`)") from error
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ValueError(f"{adapter_dir} has no adapter_config.json: it is not a peft adapter folder")
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def _resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _logits_width(model, vocab_size: int) -> int:
    """How many logits the model outputs per position (its vocabulary, padded or not)."""
    head = model.get_output_embeddings()
    return int(getattr(head, "out_features", 0) or vocab_size)


def _eos_ids(model, tokenizer) -> frozenset[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        ids.update(value if isinstance(value, list) else [value] if value is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def _refuse_sliding_window(config, model_dir: Path) -> None:
    layer_types = getattr(config, "layer_types", None) or ()
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True) or \
            any("sliding" in str(kind) for kind in layer_types):
        raise ValueError(f"{model_dir}: sliding-window attention is not supported by the local engine's batch "
                         "cache; serve this model with vLLM through an `http` backend")
