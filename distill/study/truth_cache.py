"""The teacher's top-k along the true answers: word-level KD (Kim & Rush, 2016) without the teacher's mistakes.

The teacher cache holds the teacher's own answers, wrong ones included (its priority is wrong about half the time),
so KD and SFT on it teach those mistakes as well as its soft labels. This cache keeps the ground truth as the
sequence and hard label, and takes only the distribution from the teacher: teacher-forced along the true answer,
its top-k at each token. Same prompts, same order as the gold cache it is made from.

    out/truth-cache/   the gold cache's answers, each token with the teacher's top-k (teacher-forced)
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from distill.data.cache import Manifest, read_answers, write_shard

# teacher logits over a 49,152 vocabulary for 16 rows of about 150 tokens: about 0.5 GB; on 2 AVX2 cores a batch of
# SmolLM2-135M took 7 s, 12 minutes for the study's 1,600 answers (one forward each: no batching gain on 2 cores)
BATCH = 16


def truth_cache(folder: Path, gold: Path, teacher_dir: Path, top_k: int, threads: int | None, log) -> Path:
    if (folder / "manifest.json").is_file():
        return folder
    import torch
    from tqdm import tqdm

    from distill.evaluate import load
    from distill.on_policy import teacher_topk
    from runtime.chat_template import render
    from runtime.tokenizer_hash import tokenizer_hash

    if threads:
        torch.set_num_threads(threads)
    teacher, tokenizer = load(teacher_dir)
    answers = list(read_answers(gold, 1))
    log(f"truth cache: the teacher's top-{top_k} along {len(answers)} true answers (teacher-forced)")
    scored = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(answers), BATCH), desc="truth cache", unit="batch"):
            batch = answers[start:start + BATCH]
            prompts = [tokenizer(render(tokenizer, answer.messages, answer.tools, add_generation_prompt=True),
                                 add_special_tokens=False)["input_ids"] for answer in batch]
            ids, logprobs = teacher_topk(teacher, tokenizer.pad_token_id, prompts,
                                         [answer.token_ids.tolist() for answer in batch], top_k, teacher.device)
            scored += [replace(answer, topk_ids=top_ids, topk_logprobs=top_logprobs)
                       for answer, top_ids, top_logprobs in zip(batch, ids, logprobs, strict=True)]
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_shard(partial, 0, scored)
    gold_manifest = Manifest.load(gold)
    Manifest(teacher=str(teacher_dir), tokenizer_hash=tokenizer_hash(teacher_dir), top_k=top_k, temperature=0.0,
             samples_per_prompt=1, seed=0, prompts=f"{gold_manifest.prompts}, their true answers teacher-forced",
             rows=len(scored), kept=len(scored)).save(partial)
    partial.rename(folder)
    return folder
