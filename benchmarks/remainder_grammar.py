"""What a constrained handoff costs the gateway and the teacher: deriving the grammar of the answer's rest from the
text already sent (runtime/constraints), and compiling it with xgrammar (what vLLM and the local engine do with
it), for the demo's answer schema and for `json_object`, cut at several points of a document.

    .venv/bin/python benchmarks/remainder_grammar.py
"""

from __future__ import annotations

import statistics
import time

import xgrammar
from transformers import AutoTokenizer

from distill.demo.task import ANSWER_SCHEMA
from runtime.constraints.languages import constraint
from runtime.demo import DEMO_STUDENT_DIR

DOCUMENT = '{"queue": "billing", "priority": "P2", "reply": "Hi Ana, thanks for reporting order 12345 for your Sync Cable."}'
ROUNDS = 20


def median_ms(work) -> float:
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(DEMO_STUDENT_DIR)
    compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer), cache_enabled=False)
    print(f"{'constraint':<12} {'cut at':>6} {'derive ms':>10} {'grammar chars':>14} {'compile ms':>11}")
    for name, spec in (("schema", {"json": ANSWER_SCHEMA}), ("json_object", {"json_object": True})):
        language = constraint(spec)
        for cut in (0, 12, 36, 70):
            sent = DOCUMENT[:cut]
            grammar = language.after(sent)["grammar"]
            derive = median_ms(lambda: language.after(sent))
            compile_ = median_ms(lambda: compiler.compile_grammar(grammar))
            print(f"{name:<12} {cut:>6} {derive:>10.2f} {len(grammar):>14,} {compile_:>11.2f}")


if __name__ == "__main__":
    main()
