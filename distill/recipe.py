"""The distillation recipe: a student learns from a teacher cache with α·KD + (1−α)·CE, the loop in plain sight.

    kdgate distill train --config distill/configs/demo_kd.yaml [key=value ...]

`setup()` loads the student (full fine-tune, or LoRA through peft), checks that the cache was made with the
student's tokenizer, and builds the training rows; `train()` runs AdamW with warmup + cosine, gradient accumulation
and clipping, evaluates every `eval_every` steps on held-out cache rows (teacher-forced top-1 agreement and KL), stops
early when agreement stops improving, and checkpoints every `checkpoint_every` steps; `save_final()` writes a plain
Hugging Face model (LoRA merged) that vLLM and the local engine load. A rerun of the same config resumes from the
last checkpoint; a checkpoint of another config is refused.

The loop runs through `accelerate`: one process on a CPU or a GPU as it is, several with `accelerate launch` and
a config from `distill/configs/accelerate/` (data parallel across GPUs and nodes; `batch_size` is per process, so a
step sees batch_size × processes × grad_accum answers). The student's forward and loss are one module
(`distill/step.py`) so the wrapper sees all of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from pydantic import ValidationError
from tqdm import tqdm

from distill.config import TrainConfig
from distill.data.cache import Manifest, read_answers
from distill.losses import IGNORE_INDEX, ChunkedKD, HiddenStateMSE, SampledKD, SparseKD
from distill.rows import BatchOrder, Row, collate
from distill.sampling import sample_targets
from distill.step import DistillStep
from runtime.chat_template import render
from runtime.tokenizer_hash import tokenizer_hash

CHECKPOINT = "checkpoint"
# what a resumed run may change: how far it goes and when it evaluates and saves, not what it learns
RESUMABLE = ("steps", "eval_every", "checkpoint_every", "threads")


class Recipe:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.history: list[dict] = []
        self.step = 0
        self.best = -1.0
        self.evals_since_best = 0

    # ---------------------------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        from accelerate import Accelerator
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        config = self.config
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                                       mixed_precision="bf16" if config.bf16 else "no")
        if config.bf16:
            _warn_if_emulated_bf16()
        torch.manual_seed(config.seed)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.manifest = Manifest.load(config.cache)
        self.top_k = config.loss.top_k or self.manifest.top_k
        if self.top_k > self.manifest.top_k:
            raise ValueError(f"loss.top_k={self.top_k} but the cache holds {self.manifest.top_k} alternatives per "
                             "token; lower it or regenerate the cache with a larger --top-k")
        student_hash = tokenizer_hash(config.student.init)
        if student_hash != self.manifest.tokenizer_hash:
            raise ValueError(f"the teacher cache {config.cache} was made with tokenizer "
                             f"{self.manifest.tokenizer_hash[:12]}… but the student {config.student.init} uses "
                             f"{student_hash[:12]}…; regenerate the cache with the student's tokenizer "
                             "(`kdgate distill generate --tokenizer STUDENT_DIR`)")
        self.tokenizer = AutoTokenizer.from_pretrained(config.student.init)
        if config.student.from_scratch:
            self.model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config.student.init))
        else:
            self.model = AutoModelForCausalLM.from_pretrained(config.student.init, dtype=torch.float32)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if len(self.tokenizer) > vocab:
            raise ValueError(f"the tokenizer has {len(self.tokenizer)} tokens but the student's vocabulary is {vocab}")
        if config.lora.enabled:
            from peft import LoraConfig, get_peft_model

            lora = config.lora
            self.model = get_peft_model(self.model, LoraConfig(r=lora.r, lora_alpha=lora.alpha,
                                                               lora_dropout=lora.dropout,
                                                               target_modules=lora.target_modules,
                                                               task_type="CAUSAL_LM"))
        rows = self._rows()
        held = max(1, int(len(rows) * config.eval_fraction))
        random.Random(config.seed).shuffle(rows)
        self.eval_rows, self.train_rows = rows[:held], rows[held:][:config.train_examples]
        if not self.train_rows:
            raise ValueError(f"the teacher cache {config.cache} has too few kept answers to train on ({len(rows)})")
        if config.loss.estimator == "sampled":
            if not config.loss.resample:
                self.train_rows = self._sampled(self.train_rows, np.random.default_rng(config.seed))
            kd = SampledKD(config.loss.temperature)
        else:
            kd = SparseKD(config.loss.temperature, config.loss.divergence, config.loss.beta)
        alpha = 0.0 if config.loss.kind == "sft" else config.loss.alpha
        self.loss = ChunkedKD(kd, alpha=alpha, chunk_tokens=config.loss.chunk_tokens)
        hidden, teacher = self._hidden_state_loss()
        self.on_policy = self._on_policy()
        on_policy_divergence = config.loss.on_policy.divergence
        on_policy_loss = None if on_policy_divergence in (None, config.loss.divergence) else ChunkedKD(
            SparseKD(config.loss.temperature, on_policy_divergence, config.loss.beta), alpha=alpha,
            chunk_tokens=config.loss.chunk_tokens)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.ndim >= 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.optim.weight_decay},
                                       {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}],
                                      lr=config.optim.lr, betas=(0.9, 0.95))
        step = DistillStep(self.model, self.loss, hidden, teacher, config.loss.hidden.weight, on_policy_loss)
        if hidden is not None:  # the projections learn with the student
            optimizer.add_param_group({"params": list(hidden.parameters()), "weight_decay": 0.0})
        self.step_module, self.optimizer = self.accelerator.prepare(step, optimizer)
        self._resume()

    def _hidden_state_loss(self):
        """The hidden-state loss and its frozen online teacher, or (None, None) when `loss.hidden` is unset."""
        from transformers import AutoModelForCausalLM

        settings = self.config.loss.hidden
        if settings.teacher is None:
            return None, None
        teacher_hash = tokenizer_hash(settings.teacher)
        if teacher_hash != self.manifest.tokenizer_hash:
            raise ValueError(f"loss.hidden.teacher {settings.teacher} uses tokenizer {teacher_hash[:12]}… but the "
                             f"cache and student use {self.manifest.tokenizer_hash[:12]}…; hidden states can only be "
                             "matched on the same tokens")
        teacher = AutoModelForCausalLM.from_pretrained(settings.teacher, dtype=torch.float32)
        teacher.requires_grad_(False).eval().to(self.accelerator.device)
        depths = {"student": self.model.config.num_hidden_layers, "teacher": teacher.config.num_hidden_layers}
        for pair in settings.layers:
            for role, layer in zip(("student", "teacher"), pair, strict=True):
                if not 0 <= layer <= depths[role]:
                    raise ValueError(f"loss.hidden.layers {list(pair)}: the {role} has layers 0..{depths[role]} "
                                     "(0 is the embeddings)")
        return HiddenStateMSE(self.model.config.hidden_size, teacher.config.hidden_size, settings.layers), teacher

    def _on_policy(self):
        """The online teacher that scores the student's samples, or None for off-policy training."""
        settings = self.config.loss.on_policy
        if settings.teacher is None:
            return None
        from distill.on_policy import OnPolicy

        return OnPolicy(settings.teacher, self.tokenizer, self.manifest.tokenizer_hash, self.top_k,
                        settings.temperature, settings.max_new_tokens, self.accelerator.device)

    def _on_policy_turn(self, micro: int) -> bool:
        settings = self.config.loss.on_policy
        draw = np.random.default_rng([self.config.seed, self.step, micro]).random()
        return self.on_policy is not None and self.step >= settings.start_step and draw < settings.share

    def _rows(self) -> list[Row]:
        rows = []
        for answer in read_answers(self.config.cache, self.manifest.top_k):
            prompt = render(self.tokenizer, answer.messages, answer.tools, add_generation_prompt=True)
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            rows.append(Row(prompt_ids + answer.token_ids.tolist(), len(prompt_ids),
                            answer.topk_ids[:, :self.top_k], answer.topk_logprobs[:, :self.top_k]))
        if not rows:
            dropped = ", ".join(f"{reason} {count}" for reason, count in sorted(self.manifest.dropped.items()))
            raise ValueError(f"the teacher cache {self.config.cache} has no kept answers (of {self.manifest.rows}; "
                             f"dropped: {dropped or 'none'}); a teacher that cannot do the task yet gives nothing to "
                             "learn from: train it further, or loosen `kdgate distill generate`'s filters")
        return rows

    def describe(self) -> str:
        config, accelerator = self.config, self.accelerator
        world = accelerator.num_processes
        policy = ", on-policy" if self.on_policy else ""
        return (f"{len(self.train_rows)} training answers, {len(self.eval_rows)} held out; {config.loss.kind} "
                f"({config.loss.estimator}{policy}); processes={world} on {accelerator.device.type}; "
                f"{config.batch_size * world * config.grad_accum} answers per step"
                + (f"; resuming at step {self.step}" if self.step else ""))

    def _sampled(self, rows: list[Row], rng: np.random.Generator) -> list[Row]:
        """Each answer token's sparse target drawn from the cached top-K (once at setup, or per batch with
        `loss.resample`)."""
        loss = self.config.loss
        sampled = []
        for row in rows:
            ids, log_weights = sample_targets(row.topk_ids, row.topk_logprobs, loss.draws, rng, loss.temperature,
                                              loss.proposal_temperature)
            sampled.append(Row(row.input_ids, row.answer_start, ids, log_weights))
        return sampled

    # ---------------------------------------------------------------------------------------------------- training

    def train(self) -> list[dict]:
        config, accelerator = self.config, self.accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        # the same order on every rank (each takes its own slice); a resumed run skips what it has trained on
        order = BatchOrder(len(self.train_rows), config.batch_size * world, config.seed,
                           skip=self.step * config.grad_accum)
        bar = tqdm(total=config.steps, initial=self.step, desc="distill", unit="step",
                   disable=not accelerator.is_main_process)
        started, tokens = time.monotonic(), 0
        while self.step < config.steps:
            self.step_module.train()
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr(self.step)
            parts = {"loss": 0.0, "kd_loss": 0.0, "ce_loss": 0.0}
            if config.loss.hidden.teacher is not None:
                parts["hidden_loss"] = 0.0
            for micro in range(config.grad_accum):
                picked = order.next()
                rows = [self.train_rows[i] for i in picked[rank * config.batch_size:][:config.batch_size]]
                if config.loss.estimator == "sampled" and config.loss.resample:
                    rows = self._sampled(rows, np.random.default_rng([config.seed, self.step, micro, rank]))
                on_policy = self._on_policy_turn(micro)
                if on_policy:
                    rows = self.on_policy.rows(accelerator.unwrap_model(self.step_module).model, rows,
                                               (config.seed, self.step, micro, rank), accelerator.autocast)
                batch = collate(rows, self.tokenizer.pad_token_id)
                last = micro == config.grad_accum - 1
                with accelerator.no_sync(self.step_module) if not last else contextlib.nullcontext():
                    out = self._losses(batch, on_policy)
                    accelerator.backward(out["loss"] / config.grad_accum)
                for key in parts:
                    parts[key] += out[key].item() / config.grad_accum
                tokens += int((batch["labels"] != IGNORE_INDEX).sum())
            accelerator.clip_grad_norm_(self.step_module.parameters(), config.optim.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            bar.update()
            bar.set_postfix(loss=f"{parts['loss']:.4f}", kd=f"{parts['kd_loss']:.4f}", ce=f"{parts['ce_loss']:.4f}",
                            **({"hidden": f"{parts['hidden_loss']:.4f}"} if "hidden_loss" in parts else {}),
                            lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                            tok_s=f"{tokens / (time.monotonic() - started):.0f}", refresh=False)
            if self.step % config.eval_every == 0 or self.step == config.steps:
                if self._evaluate(parts) and self.step < config.steps:
                    bar.write(f"early stop at step {self.step}: no better agreement in "
                              f"{config.early_stopping_patience} evaluations")
                    break
            if self.step % config.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        return self.history

    def _losses(self, batch: dict[str, torch.Tensor], on_policy: bool = False) -> dict[str, torch.Tensor]:
        device = self.accelerator.device
        return self.step_module({key: value.to(device) for key, value in batch.items()}, on_policy=on_policy)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Teacher-forced on held-out cache rows: top-1 agreement with the teacher's tokens and the sparse KL.

        Each rank takes every world-th row, padded with answerless rows so that all ranks run the same number of
        forwards; the sums are added across ranks.
        """
        accelerator = self.accelerator
        world, device = accelerator.num_processes, accelerator.device
        share = -(-len(self.eval_rows) // world)
        first = self.eval_rows[0]
        blank = Row(first.input_ids, len(first.input_ids), first.topk_ids[:0], first.topk_logprobs[:0])
        rows = self.eval_rows[accelerator.process_index::world]
        rows = rows + [blank] * (share - len(rows))
        self.step_module.eval()
        sums = torch.zeros(3, device=device)
        for start in range(0, len(rows), self.config.batch_size):
            batch = collate(rows[start:start + self.config.batch_size], self.tokenizer.pad_token_id)
            out = self.step_module({key: value.to(device) for key, value in batch.items()}, evaluate=True)
            sums += torch.stack([out["agree"], out["tokens"], out["kl"]])
        agree, total, kl_sum = accelerator.reduce(sums, reduction="sum").tolist()
        return {"teacher_agreement": agree / max(total, 1), "kl_to_teacher": kl_sum / max(total, 1)}

    def _evaluate(self, parts: dict[str, float]) -> bool:
        """Record an evaluation; True when early stopping says stop."""
        record = {"step": self.step, **{key: round(value, 5) for key, value in parts.items()}, **self.evaluate()}
        self.history.append(record)
        if record["teacher_agreement"] > self.best:
            self.best, self.evals_since_best = record["teacher_agreement"], 0
        else:
            self.evals_since_best += 1
        patience = self.config.early_stopping_patience
        return bool(patience) and self.evals_since_best >= patience

    def _lr(self, step: int) -> float:
        optim = self.config.optim
        if step < optim.warmup_steps:
            return optim.lr * (step + 1) / optim.warmup_steps
        progress = (step - optim.warmup_steps) / max(1, self.config.steps - optim.warmup_steps)
        return optim.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    # ---------------------------------------------------------------------------------------------------- state

    def _resolved(self) -> dict:
        return json.loads(self.config.model_dump_json())

    def save_checkpoint(self) -> None:
        """accelerate's state (every rank's model, optimizer and RNG) plus progress and config, renamed into place
        once complete: a crash loses at most the steps since the last checkpoint."""
        accelerator = self.accelerator
        folder = self.config.out / CHECKPOINT
        temporary = folder.with_name(CHECKPOINT + ".tmp")
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary), safe_serialization=False)
        # every rank's files are in before the folder moves: a rank still saving (its makedirs, its RNG state) when
        # the main process renamed the folder failed with FileExistsError, or wrote into a stray .tmp
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (temporary / "progress.json").write_text(json.dumps({"step": self.step, "best": self.best,
                                                                "evals_since_best": self.evals_since_best,
                                                                "history": self.history}))
            (temporary / "config.yaml").write_text(yaml.safe_dump(self._resolved(), sort_keys=False))
            shutil.rmtree(folder, ignore_errors=True)
            temporary.rename(folder)
        accelerator.wait_for_everyone()

    def _resume(self) -> None:
        folder = self.config.out / CHECKPOINT
        if not folder.is_dir():
            return
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        try:  # a checkpoint from before a setting existed takes its default, as the run did
            saved = json.loads(TrainConfig.model_validate(saved).model_dump_json())
        except ValidationError:
            pass  # a setting this version no longer has: another config
        current = self._resolved()
        if {k: v for k, v in saved.items() if k not in RESUMABLE} != \
                {k: v for k, v in current.items() if k not in RESUMABLE}:
            raise ValueError(f"{folder} is a checkpoint of another config; use another `out` or the same config "
                             f"(only {', '.join(f'`{key}`' for key in RESUMABLE)} may change on resume)")
        self.accelerator.load_state(str(folder))
        progress = json.loads((folder / "progress.json").read_text())
        self.step, self.best = progress["step"], progress["best"]
        self.evals_since_best, self.history = progress["evals_since_best"], progress["history"]

    def save_final(self) -> Path:
        """A plain Hugging Face model (LoRA merged) with the tokenizer, the log and the resolved config; with LoRA,
        the adapter alone in `adapter/` too (a student version for vLLM's runtime LoRA: `kdgate student register
        --adapter`)."""
        accelerator = self.accelerator
        out = self.config.out / "model"
        state = accelerator.get_state_dict(self.step_module)  # whole on the main process, even when sharded
        if not accelerator.is_main_process:
            return out
        model = accelerator.unwrap_model(self.step_module).model
        if self.config.lora.enabled:  # the adapter alone first (vLLM's runtime LoRA loads it), then merged
            model.save_pretrained(out / "adapter")
            self.tokenizer.save_pretrained(out / "adapter")
            model.merge_and_unload().save_pretrained(out)
        else:
            model.save_pretrained(out, state_dict={key.removeprefix("model."): value for key, value in state.items()
                                                   if key.startswith("model.")})
        self.tokenizer.save_pretrained(out)
        (out / "training_log.json").write_text(json.dumps(self.history, indent=1))
        (out / "distill_config.yaml").write_text(yaml.safe_dump(self._resolved(), sort_keys=False))
        return out


def run(config: TrainConfig) -> Path:
    recipe = Recipe(config)
    recipe.setup()
    if recipe.accelerator.is_main_process:
        print(recipe.describe(), flush=True)
    recipe.train()
    recipe.save_checkpoint()
    return recipe.save_final()


def _warn_if_emulated_bf16() -> None:
    """bf16=true is honoured, and said to cost ~35x where the hardware emulates it (distill/precision.py)."""
    from distill.precision import cpu_capability, native_bf16

    if not native_bf16():
        print(f"warning: bf16=true on hardware without native bf16 (torch's CPU kernels: {cpu_capability()}): "
              "autocast is emulated, about 35x slower than fp32 here; set bf16=false", file=sys.stderr, flush=True)
