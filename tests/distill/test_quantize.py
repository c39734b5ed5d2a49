"""llm-compressor on the demo student: W4A16 (GPTQ, calibrated) and FP8_DYNAMIC checkpoints that the local engine
serves; their answers are compared with the unquantized student's."""

from __future__ import annotations

import pytest

from distill.demo import task
from distill.quantize import quantize
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
