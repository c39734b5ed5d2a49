"""The distillation recipe on a real (small) teacher cache from the demo teacher: alignment, training, resume,
LoRA merge, and the errors a user can hit (unknown keys, another tokenizer, another config's checkpoint)."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from distill.config import load_config
from distill.data.cache import Manifest, tokenizer_hash
from distill.data.generate import GenerateSettings, Prompt, generate
from distill.demo import task
from distill.losses import IGNORE_INDEX
from distill.recipe import Recipe, collate, run
from gateway.backends.local import LocalBackend
from gateway.settings import BackendSettings

K = 8


@pytest.fixture(scope="module")
def cache(demo_dirs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    prompts = [Prompt(f"p{i}", t.messages(), t.answer_json()) for i, t in enumerate(task.take("train", 24, seed=9))]

    async def make():
        backend = LocalBackend("teacher", BackendSettings(model_dir=demo_dirs[1], threads=1).engine_settings())
        try:
            await generate(backend, prompts, folder, GenerateSettings(top_k=K),
                           Manifest(teacher=str(demo_dirs[1]), tokenizer_hash=tokenizer_hash(demo_dirs[1]), top_k=K,
                                    temperature=0.0, samples_per_prompt=1, seed=0, prompts="test"))
        finally:
            await backend.aclose()

    asyncio.run(make())
    return folder


def config(demo_dirs, cache, out, *overrides):
    base = [f"student.init={demo_dirs[0]}", f"cache={cache}", f"out={out}", "steps=4", "batch_size=4",
            "eval_every=2", "checkpoint_every=2", "threads=1", "optim.warmup_steps=2"]
    return load_config(None, base + list(overrides))


def test_targets_line_up_with_the_teacher(demo_dirs, cache, tmp_path):
    recipe = Recipe(config(demo_dirs, cache, tmp_path))
    recipe.setup()
    batch = collate(recipe.train_rows[:3], recipe.tokenizer.pad_token_id, K)
    labels, ids = batch["labels"][:, 1:], batch["teacher_ids"][:, 1:]  # what position t predicts
    mask = labels != IGNORE_INDEX
    assert mask.any() and (ids[mask][:, 0] == labels[mask]).all()  # greedy cache: the teacher's token first
    decoded = recipe.tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX])
    assert decoded.startswith('{"queue"')


def test_train_checkpoint_and_resume(demo_dirs, cache, tmp_path):
    first = run(config(demo_dirs, cache, tmp_path))
    log = json.loads((first / "training_log.json").read_text())
    assert [entry["step"] for entry in log] == [2, 4] and 0 <= log[-1]["teacher_agreement"] <= 1
    assert log[-1]["kd_loss"] > 0 and log[-1]["ce_loss"] > 0
    resumed = Recipe(config(demo_dirs, cache, tmp_path, "steps=6"))
    resumed.setup()
    assert resumed.step == 4 and len(resumed.history) == 2
    resumed.train()
    assert [entry["step"] for entry in resumed.history] == [2, 4, 6]
    with pytest.raises(ValueError, match="checkpoint of another config"):
        Recipe(config(demo_dirs, cache, tmp_path, "loss.alpha=0.9")).setup()


def test_sft_is_cross_entropy_only(demo_dirs, cache, tmp_path):
    recipe = Recipe(config(demo_dirs, cache, tmp_path, "loss.kind=sft"))
    recipe.setup()
    out = recipe._losses(collate(recipe.train_rows[:4], recipe.tokenizer.pad_token_id, K))
    assert out["loss"].item() == pytest.approx(out["ce_loss"].item(), rel=1e-6)


def test_lora_is_merged_into_a_plain_model(demo_dirs, cache, tmp_path):
    from transformers import AutoModelForCausalLM

    out = run(config(demo_dirs, cache, tmp_path, "lora.enabled=true", "lora.r=4", "steps=2", "optim.lr=0.05"))
    merged = AutoModelForCausalLM.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(demo_dirs[0])
    assert not any("lora" in name for name in merged.state_dict())
    changed = [name for name, value in merged.state_dict().items()
               if not torch.allclose(value, original.state_dict()[name])]
    assert any("q_proj" in name for name in changed) and not any("embed" in name for name in changed)


def test_user_errors_are_clear(demo_dirs, cache, tmp_path):
    with pytest.raises(ValueError, match="lossy"):
        config(demo_dirs, cache, tmp_path, "lossy.alpha=1")
    with pytest.raises(ValueError, match="key=value"):
        config(demo_dirs, cache, tmp_path, "steps")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    manifest = json.loads((cache / "manifest.json").read_text()) | {"tokenizer_hash": "f" * 64}
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="tokenizer ffffffffffff.*regenerate the cache"):
        Recipe(config(demo_dirs, foreign, tmp_path / "o")).setup()


def test_sweep_writes_a_table_and_a_plot(demo_dirs, cache, tmp_path):
    from distill.sweep import sweep

    base = config(demo_dirs, cache, tmp_path / "base", "steps=2")
    rows = sweep(base, tmp_path / "sweep", temperatures=[1.0, 2.0], alphas=[0.5], top_ks=[4], examples=10)
    assert [(row["temperature"], row["top_k"]) for row in rows] == [(1.0, 4), (2.0, 4)]
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 5_000
    assert "| 2 | 0.5 | 4 |" in (tmp_path / "sweep" / "sweep.md").read_text()
    with pytest.raises(ValueError, match="the cache holds 8"):
        Recipe(config(demo_dirs, cache, tmp_path / "k", "loss.top_k=30")).setup()
