"""Routing records: JSON lines that round-trip, and refuse what is not a record with the line named."""

from __future__ import annotations

import math

import numpy as np
import pytest

from router import records as records_module
from router.records import RouteRecord, labelled, read_records, write_records
from router.signals import token_signals
from tests.router.records_factory import synthetic_records


def test_records_round_trip_through_jsonl(tmp_path):
    records = synthetic_records(5)
    write_records(tmp_path / "r.jsonl", records)
    assert read_records(tmp_path / "r.jsonl") == records


SHORT = RouteRecord("a", "x", student_top=[[-0.1, -3.0], [-0.2]], student_sampled=[-0.1, -0.2])


def k1_closed_form(logprob: float) -> tuple[float, float]:
    """(entropy, margin) of a token with one reported alternative of `logprob`: the rest of the mass is one tail
    bucket, and it stands in for the runner-up (the closed form of tests/router/test_signals.py)."""
    p = math.exp(logprob)
    return -(p * math.log(p) + (1 - p) * math.log(1 - p)), logprob - math.log(1 - p)


def check_short_rows_carry_no_mass(record: RouteRecord) -> None:
    """The second token reported one alternative where the first reported two: padded, its entropy is the k=1
    closed form (the padding holds no mass), and the full row's signals are its own."""
    signals = record.signals()
    assert len(signals) == 2
    entropy, _ = k1_closed_form(-0.2)
    assert signals.entropy[1] == pytest.approx(entropy, rel=1e-9), "the padding holds mass"
    p, q = math.exp(-0.1), math.exp(-3.0)
    assert signals.entropy[0] == pytest.approx(-(p * math.log(p) + q * math.log(q) + (1 - p - q) * math.log(1 - p - q)))
    assert signals.margin[0] == pytest.approx(2.9)


def test_signals_pad_short_rows_with_no_mass():
    check_short_rows_carry_no_mass(SHORT)


def test_a_short_rows_margin_is_the_k1_tail_bound():
    """A row shorter than the others has no reported runner-up: the tail stands in, as for k = 1 (the -inf padding
    used to be taken for the runner-up, a margin of +inf: the surest token there is, with 18 % of the mass
    unreported)."""
    _, margin = k1_closed_form(-0.2)
    assert SHORT.signals().margin[1] == pytest.approx(margin)


def test_padding_check_fails_when_short_rows_are_padded_with_probability_one(monkeypatch):
    """`signals_from_rows` broken in-process to pad with 0.0 (probability 1) instead of -inf: the old check (length
    and finite entropy) passed it; the closed form must not."""
    def padded_with_zero(top_rows, sampled_logprobs):
        width = max(len(row) for row in top_rows)
        top = np.zeros((len(top_rows), width))  # (T, k) the bug: padding of probability 1
        for index, row in enumerate(top_rows):
            top[index, :len(row)] = row
        return token_signals(top, np.asarray(sampled_logprobs, dtype=np.float64))

    monkeypatch.setattr(records_module, "signals_from_rows", padded_with_zero)
    assert len(SHORT.signals()) == 2 and np.isfinite(SHORT.signals().entropy).all()
    with pytest.raises(AssertionError, match="the padding holds mass"):
        check_short_rows_carry_no_mass(SHORT)


def test_a_bad_line_is_named(tmp_path):
    write_records(tmp_path / "r.jsonl", synthetic_records(2))
    with open(tmp_path / "r.jsonl", "a") as out:
        out.write('{"id": 3}\n')
    with pytest.raises(ValueError, match=r"r.jsonl:3 is not a routing record"):
        read_records(tmp_path / "r.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no routing records"):
        read_records(tmp_path / "empty.jsonl")


def test_unlabelled_records_are_refused_for_fitting():
    unlabelled = [RouteRecord("a", "x", [[-0.1]], [-0.1])]
    with pytest.raises(ValueError, match="correctness label"):
        labelled(unlabelled)
