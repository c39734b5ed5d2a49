"""The distillation recipe on a real (small) teacher cache from the demo teacher: alignment, training, resume,
LoRA merge, and the errors a user can hit (unknown keys, another tokenizer, another config's checkpoint)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from distill.config import load_config
from distill.data.cache import Manifest
from distill.data.generate import GenerateSettings, Prompt, generate
from distill.demo import task
from distill.losses import IGNORE_INDEX
from distill.recipe import Recipe, collate, run
from gateway.settings import BackendSettings
from runtime.backends.local import LocalBackend
from runtime.tokenizer_hash import tokenizer_hash

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
    batch = collate(recipe.train_rows[:3], recipe.tokenizer.pad_token_id)
    labels, ids = batch["labels"][:, 1:], batch["teacher_ids"][:, 1:]  # what position t predicts
    mask = labels != IGNORE_INDEX
    assert mask.any() and (ids[mask][:, 0] == labels[mask]).all()  # greedy cache: the teacher's token first
    decoded = recipe.tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX])
    assert decoded.startswith('{"queue"')


@torch.no_grad()
def top1_agreement(model, rows) -> float:
    """The share of answer tokens where the model's argmax is the teacher's top-1 token, one row at a time."""
    agree = total = 0
    for row in rows:
        logits = model(input_ids=torch.tensor([row.input_ids])).logits[0]  # (T, V)
        predicted = logits[row.answer_start - 1:-1].argmax(-1)  # (A,) position t predicts token t+1
        agree += int((predicted == torch.from_numpy(row.topk_ids[:, 0].astype(np.int64))).sum())
        total += len(row.topk_ids)
    return agree / total


def test_train_checkpoint_and_resume(demo_dirs, cache, tmp_path):
    first = run(config(demo_dirs, cache, tmp_path))
    log = json.loads((first / "training_log.json").read_text())
    assert [entry["step"] for entry in log] == [2, 4]
    assert log[-1]["kd_loss"] > 0 and log[-1]["ce_loss"] > 0
    # how far it goes and when it evaluates and saves may change on resume; what it learns may not
    resumed = Recipe(config(demo_dirs, cache, tmp_path, "steps=6", "checkpoint_every=3", "eval_every=2"))
    resumed.setup()
    assert resumed.step == 4 and len(resumed.history) == 2
    # The share recomputed from the saved model's own logits on the held-out rows; the demo student is already
    # distilled (93 % exact match), so it agrees with the teacher on most tokens.
    agreement = top1_agreement(AutoModelForCausalLM.from_pretrained(first), resumed.eval_rows)
    assert log[-1]["teacher_agreement"] == pytest.approx(agreement, abs=1e-6) and agreement > 0.5
    resumed.train()
    assert [entry["step"] for entry in resumed.history] == [2, 4, 6]
    with pytest.raises(ValueError, match="checkpoint of another config"):
        Recipe(config(demo_dirs, cache, tmp_path, "loss.alpha=0.9")).setup()


def test_a_resumed_run_learns_exactly_what_an_uninterrupted_one_does(demo_dirs, cache, tmp_path, monkeypatch):
    """A run stopped after its step-2 checkpoint and resumed takes the same batches in the same order as one that
    never stopped: it drew a fresh shuffle at the resumed step, so an interrupted teacher came out another model
    (the study keys its scores by the teacher's weights)."""
    straight = run(config(demo_dirs, cache, tmp_path / "straight", "steps=6", "checkpoint_every=3", "eval_every=3",
                          "batch_size=5"))

    class Stopped(Exception):
        pass

    save = Recipe.save_checkpoint

    def save_then_stop(recipe):
        save(recipe)
        if recipe.step == 3:
            raise Stopped

    interrupted = config(demo_dirs, cache, tmp_path / "resumed", "steps=6", "checkpoint_every=3", "eval_every=3",
                         "batch_size=5")
    with monkeypatch.context() as patched:
        patched.setattr(Recipe, "save_checkpoint", save_then_stop)
        with pytest.raises(Stopped):
            run(interrupted)
    resumed = run(interrupted)
    one, other = (AutoModelForCausalLM.from_pretrained(folder).state_dict() for folder in (straight, resumed))
    assert all(torch.equal(one[name], other[name]) for name in one)


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(demo_dirs, cache, tmp_path):
    """A run stopped before an upgrade that added a defaulted setting (here loss.on_policy.start_step) is the same
    config: it was refused as another one (the study's stopped runs after the upgrade that added it)."""
    run(config(demo_dirs, cache, tmp_path, "steps=2"))
    saved = tmp_path / "checkpoint" / "config.yaml"
    older = yaml.safe_load(saved.read_text())
    del older["loss"]["on_policy"]["start_step"]
    saved.write_text(yaml.safe_dump(older))
    resumed = Recipe(config(demo_dirs, cache, tmp_path, "steps=4"))
    resumed.setup()
    assert resumed.step == 2
    older["loss"]["on_policy"]["gone"] = 1  # a setting this version does not know: another config still
    saved.write_text(yaml.safe_dump(older))
    with pytest.raises(ValueError, match="checkpoint of another config"):
        Recipe(config(demo_dirs, cache, tmp_path, "steps=4")).setup()


def test_sft_is_cross_entropy_only(demo_dirs, cache, tmp_path):
    recipe = Recipe(config(demo_dirs, cache, tmp_path, "loss.kind=sft"))
    recipe.setup()
    out = recipe._losses(collate(recipe.train_rows[:4], recipe.tokenizer.pad_token_id))
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
    rows = sweep(base, tmp_path / "sweep", temperatures=[1.0, 2.0], alphas=[0.5], top_ks=[4], examples=10,
                 estimators=("topk", "sampled"))
    assert [(row["estimator"], row["temperature"]) for row in rows] == [("topk", 1.0), ("topk", 2.0), ("sampled", 1.0),
                                                                         ("sampled", 2.0)]
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 5_000
    assert "| topk | 2 | 0.5 | 4 |" in (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| sampled | 1 | 0.5 | 4 |" in (tmp_path / "sweep" / "sweep.md").read_text()
    with pytest.raises(ValueError, match="the cache holds 8"):
        Recipe(config(demo_dirs, cache, tmp_path / "k", "loss.top_k=30")).setup()


def test_sampled_estimator_trains_on_drawn_targets(demo_dirs, cache, tmp_path):
    recipe = Recipe(config(demo_dirs, cache, tmp_path, "loss.estimator=sampled", "loss.draws=3",
                           "loss.temperature=2", "train_examples=10"))
    recipe.setup()
    assert len(recipe.train_rows) == 10
    row = recipe.train_rows[0]
    assert row.topk_ids.shape[1] == 3 and (row.topk_ids[:, 0] >= 0).all()
    assert recipe.eval_rows[0].topk_ids.shape[1] == K  # evaluation still against the cached top-k
    assert torch.allclose(torch.from_numpy(row.topk_logprobs).exp().masked_fill(
        torch.from_numpy(row.topk_ids) < 0, 0).sum(-1), torch.ones(len(row.topk_ids)), atol=1e-5)
    recipe.train()
    assert recipe.history[-1]["kd_loss"] > 0


@pytest.mark.slow
def test_two_processes_train_data_parallel(demo_dirs, cache, tmp_path):
    """The recipe under a real 2-process launch (torchrun, gloo DDP on the CPU): the path multi-GPU runs take."""
    import subprocess
    import sys
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    torchrun = Path(sys.executable).with_name("torchrun")
    args = [f"student.init={demo_dirs[0]}", f"cache={cache}", f"out={tmp_path}", "steps=4", "batch_size=2",
            "eval_every=2", "checkpoint_every=2", "threads=1", "optim.warmup_steps=1"]
    launch = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "kdgate.cli", "distill", "train"]
    done = subprocess.run(launch + args, capture_output=True, text=True, timeout=300)
    # each rank's own traceback: rank 1 failing shows only as rank 0's broken barrier in the last lines
    ranks = "\n".join(line for line in done.stderr.splitlines() if line.startswith("[rank1]"))[-4000:]
    assert done.returncode == 0, ranks + "\n" + done.stderr[-3000:]
    assert "processes=2" in done.stdout or "processes=2" in done.stderr
    log = json.loads((tmp_path / "model" / "training_log.json").read_text())
    assert [entry["step"] for entry in log] == [2, 4] and log[-1]["teacher_agreement"] > 0.5
    # each rank's RNG state is in the checkpoint, none in a stray copy: the main process once renamed the folder
    # while rank 1 was still saving into it
    assert sorted(path.name for path in (tmp_path / "checkpoint").glob("random_states_*")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]
    assert not (tmp_path / "checkpoint.tmp").exists()
    trained, initial = AutoModelForCausalLM.from_pretrained(tmp_path / "model"), \
        AutoModelForCausalLM.from_pretrained(demo_dirs[0])
    assert any(not torch.equal(value, initial.state_dict()[name]) for name, value in trained.state_dict().items())


def test_resampled_targets_are_drawn_per_batch(demo_dirs, cache, tmp_path):
    recipe = Recipe(config(demo_dirs, cache, tmp_path, "loss.estimator=sampled", "loss.draws=3", "loss.resample=true",
                           "loss.temperature=4", "steps=2"))
    recipe.setup()
    assert recipe.train_rows[0].topk_ids.shape[1] == K  # the cache's top-K kept for fresh draws
    first = recipe._sampled(recipe.train_rows[:4], np.random.default_rng([0, 0, 0, 0]))
    second = recipe._sampled(recipe.train_rows[:4], np.random.default_rng([0, 1, 0, 0]))
    assert all(row.topk_ids.shape[1] == 3 for row in first)
    assert any((a.topk_ids != b.topk_ids).any() for a, b in zip(first, second, strict=True))
    recipe.train()
    assert recipe.history[-1]["kd_loss"] > 0


def test_hidden_state_loss_trains_student_and_projections_against_a_frozen_teacher(demo_dirs, cache, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = Recipe(config(demo_dirs, cache, tmp_path, f"loss.hidden.teacher={demo_dirs[1]}",
                           "loss.hidden.layers=[[1,3],[2,6]]", "loss.hidden.weight=0.5", "steps=3"))
    recipe.setup()
    teacher = recipe.step_module._teacher[0]
    before = {name: value.clone() for name, value in teacher.state_dict().items()}
    projection = recipe.step_module.hidden.projections[0].weight.detach().clone()
    recipe.train()
    assert recipe.history[-1]["hidden_loss"] > 0
    assert all(torch.equal(value, before[name]) for name, value in teacher.state_dict().items())
    assert not torch.equal(projection, recipe.step_module.hidden.projections[0].weight)
    saved = AutoModelForCausalLM.from_pretrained(recipe.save_final())  # a plain student, no projections inside
    assert not any("projection" in name for name in saved.state_dict())


def test_hidden_state_loss_errors_name_the_setting(demo_dirs, cache, tmp_path):
    with pytest.raises(ValueError, match="loss.hidden.layers is empty"):
        config(demo_dirs, cache, tmp_path, f"loss.hidden.teacher={demo_dirs[1]}")
    with pytest.raises(ValueError, match=r"the student has layers 0\.\.2"):
        Recipe(config(demo_dirs, cache, tmp_path, f"loss.hidden.teacher={demo_dirs[1]}",
                      "loss.hidden.layers=[[3,6]]")).setup()


def test_prompts_render_with_the_tools_they_offered(demo_dirs, cache, tmp_path):
    """A cached answer's tools reach the student's prompt through its chat template: the tools demo's student learns
    its call turns behind the same tool list the teacher answered them behind."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from distill.data.cache import read_answers, write_shard
    from distill.demo.tokenizer import TOOL_CHAT_TEMPLATE
    from distill.demo.tools import TOOLS

    student = tmp_path / "student"
    tokenizer = AutoTokenizer.from_pretrained(str(demo_dirs[0]))
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE
    AutoModelForCausalLM.from_pretrained(str(demo_dirs[0])).save_pretrained(student)
    tokenizer.save_pretrained(student)
    folder = tmp_path / "cache"
    folder.mkdir()
    answers = list(read_answers(cache, K))
    write_shard(folder, 0, [replace(item, tools=list(TOOLS)) if index % 2 else item
                            for index, item in enumerate(answers)])
    manifest = Manifest.load(cache)
    manifest.tokenizer_hash = tokenizer_hash(student)
    manifest.save(folder)
    recipe = Recipe(config(demo_dirs, folder, tmp_path / "run", f"student.init={student}"))
    recipe.setup()
    prompts = [recipe.tokenizer.decode(row.input_ids[:row.answer_start])
               for row in recipe.train_rows + recipe.eval_rows]
    offered = [prompt for prompt in prompts if prompt.startswith("<|bos|><|system|>Tools:\nlookup_order(order_number)"
                                                                 "<|end|><|user|>")]
    assert len(offered) == len(answers) // 2 and len(prompts) == len(answers)
    assert all(prompt.startswith("<|bos|><|user|>") for prompt in set(prompts) - set(offered))


def test_on_policy_batches_begin_at_start_step_with_their_own_divergence(demo_dirs, cache, tmp_path, monkeypatch):
    """Off-policy batches before `loss.on_policy.start_step`, on-policy ones from it; each on-policy batch is scored
    with `loss.on_policy.divergence` (reverse here), the others with `loss.divergence` (forward)."""
    from distill.on_policy import OnPolicy
    from distill.step import DistillStep

    sampled_at, losses = [], []
    rows, forward = OnPolicy.rows, DistillStep.forward

    def sample(self, student, batch, seed, autocast):
        sampled_at.append(seed[1])  # (seed, step, micro, rank)
        return rows(self, student, batch, seed, autocast)

    def step(self, batch, evaluate=False, on_policy=False):
        if not evaluate:
            losses.append((on_policy, (self.on_policy_loss if on_policy else self.loss).kd.divergence))
        return forward(self, batch, evaluate, on_policy)

    monkeypatch.setattr(OnPolicy, "rows", sample)
    monkeypatch.setattr(DistillStep, "forward", step)
    run(config(demo_dirs, cache, tmp_path, f"loss.on_policy.teacher={demo_dirs[1]}", "loss.on_policy.start_step=2",
               "loss.on_policy.max_new_tokens=8", "loss.on_policy.divergence=reverse", "loss.estimator=topk"))
    assert sampled_at == [2, 3]  # steps 0 and 1 trained on the cache's answers
    assert losses == [(False, "forward")] * 2 + [(True, "reverse")] * 2


def test_an_on_policy_start_after_the_last_step_is_refused(demo_dirs, cache, tmp_path):
    with pytest.raises(ValueError, match="loss.on_policy.start_step is 4 but training stops at step 4"):
        config(demo_dirs, cache, tmp_path, f"loss.on_policy.teacher={demo_dirs[1]}", "loss.on_policy.start_step=4",
               "loss.estimator=topk")
