"""llm-compressor on the demo student: W4A16 (GPTQ, calibrated) and FP8_DYNAMIC checkpoints that the local engine
serves; their answers are compared with the unquantized student's."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from distill.demo import task
from distill.quantize import group_size, quantize
from runtime.contract import Delta, GenerationRequest, SamplingParams
from runtime.engine.engine import EngineSettings, LocalEngine

pytestmark = pytest.mark.slow


async def answers(model_dir, tickets) -> list[str]:
    engine = LocalEngine(EngineSettings(model_dir=model_dir, threads=1))
    try:
        out = []
        for index, ticket in enumerate(tickets):
            text = []
            async for event in engine.generate(GenerationRequest(f"q{index}", tuple(ticket.messages()),
                                                                 SamplingParams(max_tokens=96, temperature=0.0))):
                if isinstance(event, Delta):
                    text.append(event.text)
            out.append("".join(text))
        return out
    finally:
        engine.shutdown()


@pytest.mark.parametrize("scheme", ["W4A16", "FP8_DYNAMIC"])
async def test_quantized_student_serves_close_to_the_original(demo_dirs, tmp_path, scheme):
    out = quantize(demo_dirs[0], tmp_path / scheme, scheme, samples=32)
    config = (out / "config.json").read_text()
    assert "quantization_config" in config and "compressed-tensors" in config
    tickets = task.take("test", 20, seed=4)
    quantized, original = await answers(out, tickets), await answers(demo_dirs[0], tickets)
    same = sum(a == b for a, b in zip(quantized, original, strict=True))
    assert same >= 16, f"{scheme}: only {same}/20 answers unchanged"  # small numeric drift, not a broken model
    assert sum(answer == ticket.answer_json() for answer, ticket in zip(quantized, tickets, strict=True)) >= 12


def test_unknown_scheme_is_refused(demo_dirs, tmp_path):
    with pytest.raises(ValueError, match="W4A16, FP8_DYNAMIC"):
        quantize(demo_dirs[0], tmp_path, "INT3")


def narrow_student(demo_student, folder, width: int):
    """The demo student's architecture and tokenizer at another width (SmolLM2's 576 is 128 × 4.5), random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(demo_student)
    config.hidden_size, config.intermediate_size, config.head_dim = width, 3 * width, width // 2
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(demo_student / name, folder / name)
    return folder


def test_w4a16_takes_the_largest_group_that_divides_every_layer(demo_dirs, tmp_path):
    """Before, the preset's 128 columns a group refused a width of 96 (and SmolLM2's 576) after loading the model."""
    student = narrow_student(demo_dirs[0], tmp_path / "w96", 96)
    assert group_size(demo_dirs[0]) == 128 and group_size(student) == 32
    out = quantize(student, tmp_path / "w96-w4a16", "W4A16", samples=8)
    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    assert [group["weights"]["group_size"] for group in groups.values()] == [32]
    original, quantized = logits(student), logits(out)  # out loads, and its 4-bit weights are the original's
    assert torch.nn.functional.cosine_similarity(original, quantized, dim=-1).min() > 0.9


def logits(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(task.take("test", 1, seed=4)[0].text, return_tensors="pt").input_ids
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)(ids).logits[0]


def test_w4a16_refuses_a_width_no_group_divides_naming_the_way_out(demo_dirs, tmp_path):
    student = narrow_student(demo_dirs[0], tmp_path / "w72", 72)
    with pytest.raises(ValueError, match=r"\[72, 216\]: use --scheme FP8_DYNAMIC"):
        quantize(student, tmp_path / "out", "W4A16", samples=8)
