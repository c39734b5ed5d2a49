"""Schema-constrained answers through a running gateway's routing, beside the same tickets unconstrained: how
many answers fail the schema (must be 0, through every handoff), how many were handed over mid-stream, and the
routed accuracy for the teacher's share of the tokens.

    ./dev serve &          # the embedded demo; or ./dev serve-vllm: the same behind two real vLLM servers
    .venv/bin/python benchmarks/structured_handoff.py --url http://127.0.0.1:8000 --requests 500

Each ticket is sent twice, once as it is and once with `response_format` asking for the demo's answer schema
(interleaved, so both arms see the same machine). Teacher tokens are the teacher's part of each answer: all of an
escalated one, the part after the handoff point of a handed-off one (`kdgate.handed_off_tokens`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field

import httpx
import jsonschema_rs
from tqdm import tqdm

from distill.demo.scoring import parse_answer
from distill.demo.task import ANSWER_SCHEMA, take

SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "triage", "schema": ANSWER_SCHEMA, "strict": True}}


@dataclass
class Arm:
    name: str
    reasons: Counter = field(default_factory=Counter)
    right: int = 0
    invalid: int = 0
    escalated: int = 0  # wholly to the teacher (hold-back escalation, student failure)
    tokens: int = 0
    teacher_tokens: int = 0
    examples: list[str] = field(default_factory=list)  # invalid answers, a few

    def add(self, text: str, route: dict, completion_tokens: int, reference: dict, valid: bool) -> None:
        self.reasons[route["reason"]] += 1
        self.right += parse_answer(text) == reference
        self.invalid += not valid
        if not valid and len(self.examples) < 3:
            self.examples.append(text)
        self.tokens += completion_tokens
        self.escalated += route["route"] == "teacher" and route["reason"] != "handoff"
        if route["route"] == "teacher":
            self.teacher_tokens += completion_tokens - (route.get("handed_off_tokens") or 0)

    def row(self) -> str:
        count = sum(self.reasons.values())
        return (f"{self.name:<14} {count:>8} {self.reasons['handoff']:>9} {self.escalated:>9} "
                f"{self.right / count:>9.1%} {self.teacher_tokens / max(self.tokens, 1):>14.1%} {self.invalid:>8}")


async def answer(client: httpx.AsyncClient, url: str, body: dict) -> tuple[str, dict, int]:
    """The streamed answer's text, its final `kdgate` object and its completion tokens."""
    text, route, usage = [], None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body | {
            "stream": True, "stream_options": {"include_usage": True}}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread()).decode()[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"]:
                text.append(chunk["choices"][0]["delta"].get("content") or "")
            route = chunk.get("kdgate") or route
            usage = (chunk.get("usage") or {}).get("completion_tokens", usage)
    return "".join(text), route, usage


async def run(url: str, count: int, seed: int, concurrency: int, max_tokens: int, temperature: float
              ) -> tuple[Arm, Arm]:
    plain, constrained = Arm("unconstrained"), Arm("json_schema")
    validator = jsonschema_rs.validator_for(ANSWER_SCHEMA)
    gate = asyncio.Semaphore(concurrency)
    progress = tqdm(total=2 * count, desc="answers", unit="answer")

    def valid(text: str) -> bool:
        try:
            return validator.is_valid(json.loads(text))
        except ValueError:
            return False

    async def one(client: httpx.AsyncClient, index: int, ticket, arm: Arm, extra: dict) -> None:
        body = {"messages": ticket.messages(), "temperature": temperature, "seed": index,
                "max_tokens": max_tokens} | extra
        async with gate:
            text, route, tokens = await answer(client, url, body)
        arm.add(text, route, tokens, ticket.answer, valid(text))
        progress.update()

    async with httpx.AsyncClient(timeout=300) as client:
        jobs = []
        for index, ticket in enumerate(take("test", count, seed=seed)):
            jobs += [one(client, index, ticket, plain, {}),
                     one(client, index, ticket, constrained, {"response_format": SCHEMA_FORMAT})]
        await asyncio.gather(*jobs)
    progress.close()
    return plain, constrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=500, help="tickets; each is sent in both arms")
    parser.add_argument("--seed", type=int, default=3, help="of the held-out `test` tickets")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=160, help="enough for every demo answer")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampled answers are seeded by ticket")
    args = parser.parse_args()
    arms = asyncio.run(run(args.url.rstrip("/"), args.requests, args.seed, args.concurrency, args.max_tokens,
                           args.temperature))
    print(f"{'arm':<14} {'requests':>8} {'handoffs':>9} {'escalated':>9} {'accuracy':>9} {'teacher tokens':>14} "
          f"{'invalid':>8}")
    for arm in arms:
        print(arm.row())
        for text in arm.examples:
            print(f"  invalid: {text[:160]!r}")


if __name__ == "__main__":
    main()
