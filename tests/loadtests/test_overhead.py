"""The overhead benchmark's harness end to end at a tiny size (its figures come from the README's full run): every
arm starts, answers the same load, and gets its CPU per request and its added latency against `direct`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_overhead_harness_runs_every_arm(tmp_path, redis_server):
    done = subprocess.run([sys.executable, "-m", "loadtests.overhead", "--rounds", "1", "--requests", "12",
                           "--concurrency", "1", "4", "--rates", "5", "10", "--rate-seconds", "2", "--rate-repeats", "1",
                           "--redis", redis_server.url, "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "overhead.json").read_text())["rows"]
    arms = {row["arm"] for row in rows}
    assert arms == {"direct", "passthrough", "kdgate", "kdgate handoff", "kdgate hold-8", "kdgate handoff ×2",
                    "kdgate handoff +keys+limits", "kdgate handoff +keys+redis"}  # the keyed arms send their key
    assert all(row["failed"] == 0 for row in rows)
    for row in rows:
        if row["arm"] != "direct":
            assert row["cpu_ms_per_request"] > 0.1  # a gateway process did work for every request
        else:
            assert row["added_ttft_p50_ms"] == 0.0
        assert row["max_sustainable_rate"] in (0.0, 5.0, 10.0)
    rates = {row["arm"]: row["max_sustainable_rate"] for row in rows}
    assert rates["direct"] >= 5.0 and rates["kdgate handoff"] >= 5.0  # a few req/s are sustained on any machine


def test_an_arm_that_exits_at_start_is_reported_with_its_own_words(tmp_path):
    """The benchmark used to say only "server exited with 3"; the arm's own explanation was in a log nobody named."""
    import sys

    import pytest

    from loadtests.overhead import start_process
    from tests.conftest import free_port

    log = tmp_path / "arm.log"
    port = free_port()
    with pytest.raises(RuntimeError) as raised:
        start_process([sys.executable, "-c", "import sys; print('kdgate: port 1 is taken; pick another'); sys.exit(2)"],
                      f"http://127.0.0.1:{port}/health", log=log)
    assert "server exited with 2" in str(raised.value)
    assert "kdgate: port 1 is taken; pick another" in str(raised.value) and str(log) in str(raised.value)


def test_an_arm_in_front_of_vllm_is_measured_against_vllm_direct():
    """The gateway in front of a real vLLM adds latency to vLLM's own, not to the zero server's: each arm is
    compared with its own baseline from the same round."""
    from loadtests.overhead import summarise

    def cell(ttft: float) -> dict:
        return {"ttft_p50": ttft, "ttft_p99": ttft, "e2e_p50": ttft, "e2e_p99": ttft, "cpu_ms_per_request": 1.0,
                "failed": 0}

    raw = {"cells": {"direct": {1: [cell(0.001), cell(0.002)]}, "kdgate handoff": {1: [cell(0.004), cell(0.005)]},
                     "vllm direct": {1: [cell(0.030), cell(0.040)]},
                     "kdgate handoff → vllm": {1: [cell(0.033), cell(0.044)]}},
           "rates": {}, "baselines": {"direct": "direct", "kdgate handoff": "direct", "vllm direct": "vllm direct",
                                      "kdgate handoff → vllm": "vllm direct"}}
    added = {row["arm"]: round(row["added_ttft_p50_ms"], 3) for row in summarise(raw, [1])}
    assert added == {"direct": 0.0, "kdgate handoff": 3.0, "vllm direct": 0.0, "kdgate handoff → vllm": 3.5}
