"""Demo prompts on which two student versions answer differently, for a swap test whose mixed streams would show.

    .venv/bin/python benchmarks/swap_prompts.py --version v2 --out runs/swap-prompts.jsonl

Against a running gateway serving the active version (student only: start it with
KDGATE_ROUTING__HANDOFF__ENABLED=false, or the teacher finishes the answers alike), it answers `--count` demo
tickets greedily, promotes `--version`, answers them again, rolls back, and writes a JSONL (`kdgate loadtest run
--prompts`) of the tickets whose answers differ plus as many whose answers agree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import httpx

from loadtests.workload import demo_prompts


def answers(url: str, prompts: list, max_tokens: int) -> list[str]:
    with httpx.Client(timeout=60) as client:
        return [client.post(f"{url}/v1/chat/completions", json={"messages": prompt.messages, "temperature": 0,
                                                                 "max_tokens": max_tokens}
                            ).json()["choices"][0]["message"]["content"] for prompt in prompts]


def student(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "kdgate.cli", "student", *args], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--version", required=True, help="a registered candidate version")
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("runs/swap-prompts.jsonl"))
    args = parser.parse_args()
    prompts = demo_prompts(args.count, 0)
    before = answers(args.url, prompts, args.max_tokens)
    student("promote", args.version, "--url", args.url)
    try:
        after = answers(args.url, prompts, args.max_tokens)
    finally:
        student("rollback", "--url", args.url)
    differ = [index for index, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    if not differ:  # an empty file would leave the load test after it nothing to send, and no swap to see
        raise SystemExit(f"{args.version} answered all {len(prompts)} demo tickets as the active version does: "
                         "nothing would show which version served; try more --count, or a version that differs")
    agree = [index for index in range(len(prompts)) if index not in set(differ)][:len(differ)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as out:
        for index in differ + agree:
            out.write(json.dumps({"id": f"demo-{index}", "messages": prompts[index].messages}) + "\n")
    print(f"{len(prompts)} demo tickets: {len(differ)} answered differently by the active version and "
          f"{args.version}; wrote them and {len(agree)} that agree to {args.out}")


if __name__ == "__main__":
    main()
