"""`kdgate shadow export`: the store's records out as JSON lines or Parquet, filtered by kind and time."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq

from runtime.store.records import ShadowStore
from tests.conftest import ROOT
from tests.runtime.store.test_records import record


def kdgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdgate.cli", "shadow", "export", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_export_jsonl_and_parquet(tmp_path):
    url = f"sqlite:///{tmp_path}/shadow.sqlite3"
    store = ShadowStore(url)
    now = datetime.now(UTC)
    store.write(record("old", now - timedelta(days=3), mean_kl=0.5))
    store.write(record("new", now, kind="escalation", teacher_answer="t"))
    store.close()

    done = kdgate("--store-url", url, "--out", str(tmp_path / "all.jsonl"))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [row["request_id"] for row in rows] == ["old", "new"] and rows[0]["mean_kl"] == 0.5
    assert rows[0]["student_tokens"][0]["top"] == [["ok", -0.1]]

    done = kdgate("--store-url", url, "--out", str(tmp_path / "esc.parquet"), "--format", "parquet",
                  "--kind", "escalation", "--since", (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S"))
    assert done.returncode == 0, done.stderr
    table = pq.read_table(tmp_path / "esc.parquet").to_pylist()
    assert [row["request_id"] for row in table] == ["new"] and json.loads(table[0]["prompt"])[0]["role"] == "user"


def test_export_refuses_a_bad_format(tmp_path):
    done = kdgate("--store-url", f"sqlite:///{tmp_path}/s.sqlite3", "--out", str(tmp_path / "x"), "--format", "csv")
    assert done.returncode == 2 and "use jsonl or parquet" in done.stderr


def test_export_shows_the_constraint_each_answer_was_generated_under(tmp_path):
    """In JSON lines as the client's object; in Parquet as JSON text (schemas are nested and differ per record)."""
    url = f"sqlite:///{tmp_path}/shadow.sqlite3"
    store = ShadowStore(url)
    now = datetime.now(UTC)
    schema = {"json": {"type": "object", "properties": {"queue": {"type": "string"}}, "required": ["queue"]}}
    store.write(record("schema", now, constraint=schema, constraint_masked=True))
    store.write(record("grammar", now, kind="escalation", constraint={"grammar": 'root ::= "ok"'}))
    store.write(record("free", now))
    store.close()

    assert kdgate("--store-url", url, "--out", str(tmp_path / "all.jsonl")).returncode == 0
    rows = {row["request_id"]: row for row in map(json.loads, (tmp_path / "all.jsonl").read_text().splitlines())}
    assert (rows["schema"]["constraint"], rows["schema"]["constraint_masked"]) == (schema, True)
    assert rows["grammar"]["constraint"] == {"grammar": 'root ::= "ok"'} and rows["grammar"]["constraint_masked"] is None
    assert (rows["free"]["constraint"], rows["free"]["constraint_masked"]) == (None, None)

    done = kdgate("--store-url", url, "--out", str(tmp_path / "all.parquet"), "--format", "parquet")
    assert done.returncode == 0, done.stderr
    table = {row["request_id"]: row for row in pq.read_table(tmp_path / "all.parquet").to_pylist()}
    assert json.loads(table["schema"]["constraint"]) == schema and table["schema"]["constraint_masked"] is True
    assert table["free"]["constraint"] is None
