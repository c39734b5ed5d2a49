"""Cross-check `kdgate loadtest` against GuideLLM: the same server, prompts, output length and constant arrival
rate, the two tools alternating run by run; their median TTFTs side by side.

    python -m loadtests.crosscheck --url http://127.0.0.1:8000 --rate 4 --requests 80 --rounds 2 \
        --guidellm .venv-guidellm/bin/guidellm --tokenizer distill/demo/artifacts/student --out runs/crosscheck

Both tools start the TTFT clock at httpx's `send_request_headers.started` trace event (the request's headers
start going out, after the client built the request and checked out a connection) and stop it at the first SSE
chunk that carries generated text (a role-only first chunk does not count). `kdgate loadtest` also reports TTFC,
the first chunk of any kind, which vLLM's own benchmark counts. GuideLLM (PyPI `guidellm`, 0.8) lives in its own
virtualenv: it pins its own transformers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loadtests.execute import discover_model, normalise_base_url
from loadtests.runner import Bounds, Shape, Target, run
from loadtests.stats import summarize
from loadtests.workload import BodySettings, demo_prompts

CLOCK = "request headers start going out → first content chunk"


def guidellm_run(args: argparse.Namespace, model: str, prompts_file: Path, report: Path) -> dict:
    backend = f"kind=openai_http,target={args.base_url},model={model},max_tokens={args.max_tokens}"
    command = [args.guidellm, "run", "--backend", backend,
               "--profile", f"kind=constant,rate={args.rate:g},warmup={args.warmup}",
               "--constraint", f"kind=max_requests,count={args.requests + args.warmup}",
               "--tokenizer", f"kind=hf_auto,model={args.tokenizer}",
               "--data", f"kind=json_file,path={prompts_file}",
               "--output", f"kind=json,path={report}", "--disable-console"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GUIDELLM__MAX_WORKER_PROCESSES": "1"}
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    if finished.returncode != 0:
        raise RuntimeError(f"guidellm failed ({finished.returncode}): {finished.stderr[-2000:]}")
    (benchmark,) = json.loads(report.read_text())["benchmarks"]
    metrics = benchmark["metrics"]
    ttft = metrics["time_to_first_token_ms"]["successful"]
    return {"tool": "guidellm", "ttft_median_ms": ttft["median"], "ttft_p90_ms": ttft["percentiles"]["p90"],
            "measured": ttft["count"], "failed": metrics["request_totals"]["errored"],
            "rate": metrics["requests_per_second"]["successful"]["mean"]}


def kdgate_run(args: argparse.Namespace, model: str, prompts) -> dict:
    # GuideLLM sends no temperature (the server's default, 1.0) and max_completion_tokens: the same request here
    request = BodySettings(model=model, max_tokens=args.max_tokens, temperature=1.0)
    bounds = Bounds(requests=args.requests, warmup=args.warmup, timeout=60.0)
    result = asyncio.run(run(Target(f"{args.base_url}/chat/completions", {}, request), prompts,
                             Shape(rate=args.rate, arrivals="constant"), bounds))
    summary = summarize(result.records, result.elapsed)
    return {"tool": "kdgate loadtest", "ttft_median_ms": 1000 * summary["ttft"]["median"],
            "ttft_p90_ms": 1000 * summary["ttft"]["p90"], "measured": summary["succeeded"],
            "failed": summary["failed"], "rate": summary["request_throughput"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", help="default: the first model /v1/models lists")
    parser.add_argument("--rate", type=float, default=4.0, help="constant arrivals per second, both tools")
    parser.add_argument("--requests", type=int, default=80, help="measured requests per run")
    parser.add_argument("--warmup", type=int, default=5, help="requests left out at the start of each run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per tool, alternating")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--guidellm", default=".venv-guidellm/bin/guidellm")
    parser.add_argument("--tokenizer", default="distill/demo/artifacts/student",
                        help="a local Hugging Face tokenizer folder for GuideLLM (it counts prompt tokens)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one GuideLLM run may take")
    parser.add_argument("--out", type=Path, default=Path("runs/crosscheck"))
    args = parser.parse_args()
    args.base_url = normalise_base_url(args.url)
    model = args.model or discover_model(args.base_url, {})
    if model is None:
        parser.error(f"{args.base_url}/models lists no model (is the server up?); pass --model")
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = demo_prompts(args.requests + args.warmup, seed=0)
    prompts_file = args.out / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": prompt.text}) + "\n" for prompt in prompts))
    kdgate_run(args, model, prompts)  # the server's first requests are slower (lazy set-up): neither tool gets them
    runs = []
    for round_index in range(args.rounds):
        tools = ["guidellm", "kdgate"] if round_index % 2 == 0 else ["kdgate", "guidellm"]
        for tool in tools:
            if tool == "guidellm":
                result = guidellm_run(args, model, prompts_file, args.out / f"guidellm-{round_index + 1}.json")
            else:
                result = kdgate_run(args, model, prompts)
            runs.append(result | {"round": round_index + 1})
            print(f"round {round_index + 1} {result['tool']:16s} TTFT median {result['ttft_median_ms']:7.1f} ms "
                  f"({result['measured']} requests, {result['rate']:.2f} req/s)", flush=True)
    medians = {tool: statistics.median(r["ttft_median_ms"] for r in runs if r["tool"] == tool)
               for tool in ("kdgate loadtest", "guidellm")}
    difference = medians["guidellm"] / medians["kdgate loadtest"] - 1
    summary = {"url": args.base_url, "model": model, "rate": args.rate, "max_tokens": args.max_tokens,
               "runs": runs, "median_of_medians_ms": medians, "guidellm_vs_kdgate": difference,
               "within_10_percent": abs(difference) <= 0.10}
    (args.out / "crosscheck.json").write_text(json.dumps(summary, indent=1))
    Console(width=140).print(_table(runs, medians, args))
    print(f"GuideLLM's median TTFT is {difference:+.1%} of kdgate loadtest's "
          f"({'within' if summary['within_10_percent'] else 'NOT within'} 10 %); written to {args.out}/")


def _table(runs: list[dict], medians: dict, args) -> Table:
    table = Table(title=f"TTFT at a constant {args.rate:g} req/s, {args.max_tokens}-token answers, {args.base_url}",
                  title_justify="left")
    for column in ("tool", "clock", "round", "measured", "failed", "req/s", "TTFT p50 ms", "TTFT p90 ms"):
        table.add_column(column, justify="left" if column in ("tool", "clock") else "right")
    for run_ in runs:
        table.add_row(run_["tool"], CLOCK, str(run_["round"]), str(run_["measured"]), str(run_["failed"]),
                      f"{run_['rate']:.2f}", f"{run_['ttft_median_ms']:.1f}", f"{run_['ttft_p90_ms']:.1f}")
    for tool, value in medians.items():
        table.add_row(tool, "median over rounds", "", "", "", "", f"{value:.1f}", "")
    return table


if __name__ == "__main__":
    main()
