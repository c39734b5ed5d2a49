"""`kdgate shadow`: read the shadow store from the command line."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import typer

app = typer.Typer(help="Shadow records: export them for calibration and re-distillation.", no_args_is_help=True)


@app.command()
def export(
    out: Path = typer.Option(..., dir_okay=False, help="file to write"),
    store_url: str | None = typer.Option(None, help="SQLAlchemy URL (default: the gateway settings' shadow.store_url)"),
    format: str = typer.Option("jsonl", help="jsonl or parquet"),
    kind: str | None = typer.Option(None, help="shadow or escalation (default: both)"),
    since: datetime | None = typer.Option(None, help="only records created at or after this time (UTC if naive)"),
    config: Path | None = typer.Option(None, exists=True, dir_okay=False, help="gateway YAML settings"),
) -> None:
    """Write shadow and escalation records, oldest first, as JSON lines or a Parquet file.

    Example:  kdgate shadow export --out escalations.jsonl --kind escalation --since 2026-11-01
    """
    from gateway.settings import load_settings
    from runtime.store.records import ShadowStore

    if format not in ("jsonl", "parquet"):
        raise typer.BadParameter(f"{format!r}: use jsonl or parquet", param_hint="--format")
    url = store_url or load_settings(config).shadow.store_url
    if not url:
        raise typer.BadParameter("no store configured; pass --store-url or set shadow.store_url")
    store = ShadowStore(url)
    try:
        records = (_row(record) for record in store.iter_records(since=since, kind=kind))
        written = _write_jsonl(out, records) if format == "jsonl" else _write_parquet(out, records)
    finally:
        store.close()
    typer.echo(f"{written} records -> {out}")


def _row(record) -> dict:
    row = asdict(record)
    row["created_at"] = record.created_at.isoformat()
    return row


def _write_jsonl(path: Path, rows) -> int:
    count = 0
    with open(path, "w") as out:
        for row in rows:
            out.write(json.dumps(row, allow_nan=False) + "\n")
            count += 1
    return count


def _write_parquet(path: Path, rows) -> int:
    """Scalar columns stay columns; token lists and prompts are JSON text (nested and ragged)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise typer.BadParameter("parquet needs pyarrow: pip install 'kdgate[export]'", param_hint="--format") \
            from None
    nested = ("prompt", "student_tokens", "teacher_scores", "teacher_tokens")
    rows = [row | {key: json.dumps(row[key]) if row[key] is not None else None for key in nested} for row in rows]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return len(rows)
