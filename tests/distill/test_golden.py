"""The committed golden set is what `kdgate demo golden` writes: the trainer's gate judges every candidate on the
same frozen tickets, by slice."""

from __future__ import annotations

import json

from distill.demo.golden import GOLDEN_SIZE, LAUNCHED_SIZE, golden_lines
from distill.online.evaluate import read_golden
from runtime.demo import ARTIFACTS_DIR


def test_the_committed_golden_set_is_the_generated_one():
    committed = (ARTIFACTS_DIR / "golden.jsonl").read_text().splitlines()
    assert committed == golden_lines()
    examples = read_golden(ARTIFACTS_DIR / "golden.jsonl")
    assert len(examples) == GOLDEN_SIZE + LAUNCHED_SIZE and {example.slice for example in examples} == {
        "one_order", "two_orders", "two_orders_renamed", "launched"}
    assert json.loads(examples[0].reference).keys() == {"queue", "priority", "reply"}


def test_a_smaller_golden_set_keeps_every_slice_in_its_share():
    examples = read_golden(ARTIFACTS_DIR / "golden.jsonl", limit=50)
    slices = [example.slice for example in examples]
    assert len(examples) == 50 and len(set(id(example) for example in examples)) == 50
    # the launched tickets are the file's last 100 of 500: a first-N cut would drop them all
    assert slices.count("launched") == 10
