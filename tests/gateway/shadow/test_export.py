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
