"""Depth pruning: a student initialised from the teacher's own layers, then distilled to recover (the recipe of
NVIDIA's Minitron: rank the blocks on calibration text, drop the least important, distil).

A block's importance is its Block Influence (ShortGPT): one minus the mean cosine similarity between the hidden
states entering and leaving it, over the calibration text's tokens. A block that barely turns the residual stream
matters least. `uniform` keeps evenly spaced blocks (the first and last among them) instead, as a baseline.

The pruned model keeps the teacher's embeddings, final norm, head and tokenizer (so it shares the teacher's
vocabulary, which distillation on cached top-k logprobs needs) and the kept blocks' weights unchanged. Any
decoder-only Hugging Face model whose blocks are `model.model.layers` (Llama, Qwen, Mistral, Gemma, SmolLM).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

STRATEGIES = ("importance", "uniform")


def block_influence(model, tokenizer, texts: Sequence[str], batch_size: int = 8, max_length: int = 256) -> list[float]:
    """Per block, 1 - mean cos(input, output) of its hidden states over the texts' tokens (padding left out)."""
    import torch

    layers = len(blocks(model))
    sums, count = torch.zeros(layers, dtype=torch.float64), 0
    tokenizer.padding_side = "right"
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                                truncation=True, max_length=max_length, add_special_tokens=False)
            hidden = model(**encoded, output_hidden_states=True).hidden_states  # L + 1 tensors of (B, T, H)
            mask = encoded["attention_mask"].bool()  # (B, T)
            for index in range(layers):
                cosine = torch.nn.functional.cosine_similarity(hidden[index][mask].double(),
                                                               hidden[index + 1][mask].double(), dim=-1)  # (N,)
                sums[index] += float((1.0 - cosine).sum())
            count += int(mask.sum())
    return (sums / max(count, 1)).tolist()


def choose_layers(influence: Sequence[float], keep: int, strategy: str) -> list[int]:
    """The indices of the blocks kept, in their order in the model."""
    total = len(influence)
    if not 1 <= keep <= total:
        raise ValueError(f"--keep must be between 1 and the model's {total} blocks, got {keep}")
    if strategy == "uniform":
        return sorted({round(index * (total - 1) / max(keep - 1, 1)) for index in range(keep)}) if keep > 1 else [0]
    if strategy != "importance":
        raise ValueError(f"the strategy is one of {', '.join(STRATEGIES)}, got {strategy!r}")
    ranked = sorted(range(total), key=lambda index: (-influence[index], index))
    return sorted(ranked[:keep])


def blocks(model):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} keeps no decoder blocks at `model.layers`; depth pruning knows "
                         "Llama-style decoder-only models (Llama, Qwen, Mistral, Gemma, SmolLM)")
    return layers


def prune(model_dir: Path, out: Path, keep: int, strategy: str, texts: Sequence[str]) -> dict:
    """Write `out`: `model_dir` with `keep` of its blocks, chosen by `strategy` on `texts`; returns the report."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    influence = block_influence(model, tokenizer, texts)
    kept = choose_layers(influence, keep, strategy)
    layers = blocks(model)
    model.model.layers = torch.nn.ModuleList([layers[index] for index in kept])
    for position, layer in enumerate(model.model.layers):
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = position  # the KV cache is indexed by position in the pruned stack
    model.config.num_hidden_layers = keep
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types:  # per-block attention kinds (sliding or full), kept with their blocks
        model.config.layer_types = [layer_types[index] for index in kept]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report = {"source": str(model_dir), "strategy": strategy, "blocks": len(influence), "kept": kept,
              "influence": influence, "calibration_texts": len(texts),
              "parameters": sum(parameter.numel() for parameter in model.parameters())}
    (out / "kdgate-prune.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
