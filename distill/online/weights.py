"""A LoRA student version's weights as one model folder: the base with the adapter merged, for training from."""

from __future__ import annotations

from pathlib import Path


def merge_adapter(base_dir: Path, adapter_dir: Path, out: Path) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out
