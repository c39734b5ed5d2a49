"""Routing records: JSON lines that round-trip, and refuse what is not a record with the line named."""

from __future__ import annotations

import numpy as np
import pytest

from router.records import RouteRecord, labelled, read_records, write_records
from tests.router.records_factory import synthetic_records


def test_records_round_trip_through_jsonl(tmp_path):
    records = synthetic_records(5)
    write_records(tmp_path / "r.jsonl", records)
    assert read_records(tmp_path / "r.jsonl") == records


def test_signals_pad_short_rows_with_no_mass():
    record = RouteRecord("a", "x", student_top=[[-0.1, -3.0], [-0.2]], student_sampled=[-0.1, -0.2])
    signals = record.signals()
    assert len(signals) == 2
    assert np.isfinite(signals.entropy).all()


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
