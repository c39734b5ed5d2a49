"""The README's distillation section end to end, through the `kdgate` command at a tiny size: generate a teacher
cache, train a KD student and its SFT baseline, evaluate them side by side, quantize the KD student, and serve the
quantized student through the gateway to the `openai` SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from openai import OpenAI

from tests.conftest import ROOT, free_port, stop, wait_until_up

pytestmark = pytest.mark.slow

TICKET = "Hi, my SmartHub Pro from order 48213 will not turn on. This is urgent! We are an Enterprise customer."


def kdgate(*args: str, timeout: float = 600) -> str:
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=os.environ | {"COLUMNS": "200"})
    assert done.returncode == 0, f"kdgate {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def check_eval_report(results: dict, examples: int) -> None:
    """Every share is a count over the `examples` tickets; a whole answer is right only where each field is; the
    recovered gap is (kd - sft) / (teacher - sft) of the exact-match figures, or None with no gap."""
    for name in ("kd", "sft", "teacher"):
        board = results[name]
        shares = {"exact_match": board["exact_match"], "answer_agreement": board["answer_agreement"],
                  **board["fields"]}
        for key, share in shares.items():
            assert share * examples == pytest.approx(round(share * examples), abs=1e-9), (name, key, share)
        assert board["exact_match"] <= min(board["fields"].values()), (name, board)
    teacher, kd, sft = (results[name]["exact_match"] for name in ("teacher", "kd", "sft"))
    if teacher <= sft:
        assert results["kd_gap_recovered"] is None
    else:
        assert results["kd_gap_recovered"] == pytest.approx((kd - sft) / (teacher - sft))


def test_generate_train_eval_quantize_serve(tmp_path):
    cache, kd, sft, quantized = (tmp_path / name for name in ("cache", "kd", "sft", "kd-w4a16"))
    out = kdgate("distill", "generate", "--demo", "96", "--top-k", "8", "--threads", "1", "--out", str(cache))
    assert "kept" in out
    shared = [f"cache={cache}", "steps=30", "eval_every=15", "checkpoint_every=15", "optim.warmup_steps=5",
              "batch_size=8"]
    kdgate("distill", "train", "--config", "distill/configs/demo_kd.yaml", f"out={kd}", *shared)
    kdgate("distill", "train", "--config", "distill/configs/demo_sft.yaml", f"out={sft}", *shared)
    report = tmp_path / "eval.json"
    out = kdgate("distill", "eval", "--model", f"kd={kd / 'model'}", "--model", f"sft={sft / 'model'}", "--kd", "kd",
                 "--sft", "sft", "--examples", "20", "--threads", "1", "--json-out", str(report))
    results = json.loads(report.read_text())
    assert {"kd", "sft", "teacher"} <= set(results) and "kd_gap_recovered" in results
    check_eval_report(results, examples=20)
    assert results["teacher"]["exact_match"] > 0.8
    kdgate("distill", "quantize", "--model", str(kd / "model"), "--scheme", "W4A16", "--cache", str(cache),
           "--samples", "16", "--out", str(quantized))
    assert "compressed-tensors" in (quantized / "config.json").read_text()

    port = free_port()
    env = os.environ | {"KDGATE_STUDENT__MODEL_DIR": str(quantized), "KDGATE_STUDENT__THREADS": "1",
                        "KDGATE_TEACHER": "null", "KDGATE_SHADOW__ENABLED": "false"}
    server = subprocess.Popen([sys.executable, "-m", "kdgate.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/readyz", server, timeout=120)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        reply = client.chat.completions.with_raw_response.create(
            model="kdgate-demo", messages=[{"role": "user", "content": TICKET}], temperature=0, max_tokens=96)
        assert reply.headers["x-kdgate-route"] == "student"
        assert reply.parse().choices[0].message.content  # a 30-step student writes something, not yet a good answer
    finally:
        stop(server)
