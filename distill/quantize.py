"""`kdgate distill quantize`: a compressed-tensors checkpoint for vLLM, made with llm-compressor.

- `W4A16`: GPTQ 4-bit weights, 16-bit activations, calibrated on a sample of the distillation data (prompt and
  teacher answer, rendered with the student's chat template); one scale per group of 128 input columns (the
  preset's), or 64 or 32 where 128 does not divide every quantized layer's input width (SmolLM2's 576: the preset
  refuses it). vLLM's CPU kernel for it runs in bfloat16 (`--dtype bfloat16`), not float32;
- `FP8_DYNAMIC`: 8-bit float weights with per-token dynamic activation scales, no calibration; vLLM runs it natively
  on Ada GPUs (L40S, compute capability 8.9) and newer.

The lm_head stays in 16 bits. vLLM loads the output folder directly (`vllm serve OUT`); transformers (and so the
local engine and `kdgate distill eval`) loads it too, decompressing to the float dtype, which is how the accuracy of
the quantized student is measured on a CPU.
"""

from __future__ import annotations

from pathlib import Path

SCHEMES = ("W4A16", "FP8_DYNAMIC")
GROUP_SIZES = (128, 64, 32)  # W4A16's preset group, halved until it divides every quantized layer's input width


def input_widths(model_dir: Path) -> dict[str, int]:
    """The input width (columns) of every weight matrix W4A16 quantizes, by name, read from the safetensors headers
    without loading a tensor: the embeddings and the lm_head stay in 16 bits."""
    from safetensors import safe_open

    widths = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(path, framework="pt") as weights:
            for name in weights.keys():
                shape = weights.get_slice(name).get_shape()
                if len(shape) == 2 and name.endswith(".weight") and "embed" not in name and "lm_head" not in name:
                    widths[name.removesuffix(".weight")] = shape[1]
    if not widths:
        raise ValueError(f"no weight matrices in {model_dir}/*.safetensors to quantize")
    return widths


def group_size(model_dir: Path) -> int:
    """The largest of GROUP_SIZES that divides every quantized layer's input width."""
    widths = input_widths(model_dir)
    for size in GROUP_SIZES:
        if all(width % size == 0 for width in widths.values()):
            return size
    odd = sorted({width for width in widths.values() if width % GROUP_SIZES[-1]})
    raise ValueError(f"W4A16 needs input widths divisible by {GROUP_SIZES[-1]} at least; {model_dir} has {odd}: "
                     "use --scheme FP8_DYNAMIC, which has no groups")


def calibration_texts(model_dir: Path, cache: Path | None, samples: int, seed: int = 0) -> list[str]:
    """Chat-rendered prompt + answer texts (with the tools a cached answer was given, as the model saw them): from
    a teacher cache's kept answers, else from demo training tickets."""
    from transformers import AutoTokenizer

    from runtime.chat_template import render

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if cache is not None:
        from distill.data.cache import Manifest, read_answers

        manifest = Manifest.load(cache)
        triples = []
        for answer in read_answers(cache, manifest.top_k):
            triples.append((answer.messages, answer.text, answer.tools))
            if len(triples) == samples:
                break
    else:
        from distill.demo import task

        triples = [(ticket.messages(), ticket.answer_json(), None)
                   for ticket in task.take("train", samples, seed=seed)]
    if not triples:
        raise ValueError(f"no calibration data in {cache}")
    return [render(tokenizer, messages + [{"role": "assistant", "content": text}], tools)
            for messages, text, tools in triples]


def quantize(model_dir: Path, out: Path, scheme: str, cache: Path | None = None, samples: int = 256,
             max_seq_length: int = 512) -> Path:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    try:
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    except ImportError:
        raise ValueError("quantization needs llm-compressor: pip install 'kdgate[quantize]'") from None
    if scheme == "FP8_DYNAMIC":
        oneshot(model=str(model_dir), processor=str(model_dir), output_dir=str(out),
                recipe=QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"]))
        return out
    from compressed_tensors.quantization import preset_name_to_scheme
    from datasets import Dataset

    scheme_args = preset_name_to_scheme("W4A16", ["Linear"])
    scheme_args.weights.group_size = group_size(model_dir)
    texts = calibration_texts(model_dir, cache, samples)
    # Directory paths, not objects: llm-compressor resolves a model object plus tokenizer as a hub id (NOTES.md).
    oneshot(model=str(model_dir), processor=str(model_dir), dataset=Dataset.from_dict({"text": texts}),
            recipe=GPTQModifier(config_groups={"group_0": scheme_args}, ignore=["lm_head"]), output_dir=str(out),
            max_seq_length=max_seq_length, num_calibration_samples=len(texts))
    return out
