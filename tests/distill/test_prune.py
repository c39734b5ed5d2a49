"""`kdgate distill prune`: a depth-pruned student made of the teacher's own blocks (Minitron's recipe), chosen by
Block Influence on calibration text, loaded by transformers and answering."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.demo.generation import greedy_answers
from distill.prune import block_influence, choose_layers
from distill.quantize import calibration_texts
from runtime.demo import ARTIFACTS_DIR

TEACHER = ARTIFACTS_DIR / "teacher"


def test_importance_keeps_the_most_influential_blocks_in_order_and_uniform_spaces_them():
    assert choose_layers([0.9, 0.1, 0.02, 0.05, 0.07, 0.15], 2, "importance") == [0, 5]
    assert choose_layers([0.9, 0.1, 0.02, 0.05, 0.07, 0.15], 4, "importance") == [0, 1, 4, 5]
    assert choose_layers([0.5] * 30, 8, "uniform") == [0, 4, 8, 12, 17, 21, 25, 29]
    with pytest.raises(ValueError, match="between 1 and the model's 6 blocks"):
        choose_layers([0.1] * 6, 7, "importance")
    with pytest.raises(ValueError, match="one of importance, uniform"):
        choose_layers([0.1] * 6, 2, "random")


def test_a_block_that_leaves_the_stream_unchanged_has_no_influence_and_goes_first():
    """Block 3 with its output projections zeroed adds nothing to the residual stream: its influence is 0 and it is
    the one block a 5-of-6 pruning drops (the check can fail: the untouched teacher keeps block 3)."""
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    model = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    texts = calibration_texts(TEACHER, None, 16)
    untouched = block_influence(model, tokenizer, texts)
    with torch.no_grad():
        model.model.layers[3].self_attn.o_proj.weight.zero_()
        model.model.layers[3].mlp.down_proj.weight.zero_()
    silenced = block_influence(model, tokenizer, texts)
    assert silenced[3] == pytest.approx(0.0, abs=1e-9) and untouched[3] > 0.01
    assert choose_layers(silenced, 5, "importance") == [0, 1, 2, 4, 5]
    assert 3 in choose_layers(untouched, 5, "importance")


def test_the_pruned_student_is_the_teachers_blocks_and_answers(tmp_path):
    out = tmp_path / "pruned"
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", "distill", "prune", "--model", str(TEACHER),
                           "--keep", "2", "--samples", "16", "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "kdgate-prune.json").read_text())
    kept = report["kept"]
    assert len(kept) == 2 and kept == choose_layers(report["influence"], 2, "importance")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    teacher, pruned = load_file(TEACHER / "model.safetensors"), load_file(out / "model.safetensors")
    for position, index in enumerate(kept):
        for name, tensor in teacher.items():
            if name.startswith(f"model.layers.{index}."):
                assert torch.equal(pruned[name.replace(f"layers.{index}.", f"layers.{position}.", 1)], tensor), name
    assert torch.equal(pruned["model.embed_tokens.weight"], teacher["model.embed_tokens.weight"])
    assert not any(name.startswith("model.layers.2.") for name in pruned)
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    (answer,) = greedy_answers(model, tokenizer, [[{"role": "user", "content": "my order 12345 is late"}]],
                               max_new_tokens=8)
    assert isinstance(answer, str) and answer  # a working model, if not yet a good one: distillation is next
    refused = subprocess.run([sys.executable, "-m", "kdgate.cli", "distill", "prune", "--model", str(TEACHER),
                              "--keep", "9", "--out", str(tmp_path / "no")], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "between 1 and the model's 6 blocks" in refused.stderr
