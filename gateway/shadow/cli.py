"""`kdgate shadow`: read the shadow store from the command line."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import typer

app = typer.Typer(help="Shadow records: export them for calibration and re-distillation; estimate speculative "
                  "decoding with the student as the teacher's draft.", no_args_is_help=True)


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


@app.command("draft-acceptance")
def draft_acceptance(
    store_url: str | None = typer.Option(None, help="SQLAlchemy URL (default: the gateway settings' shadow.store_url)"),
    since: datetime | None = typer.Option(None, help="only records created at or after this time (UTC if naive)"),
    draft_cost: float = typer.Option(0.1, min=0.0, max=1.0, help="the student's cost per token relative to the "
                                     "teacher's (roughly its size over the teacher's: 8B/70B ≈ 0.11)"),
    config: Path | None = typer.Option(None, exists=True, dir_okay=False, help="gateway YAML settings"),
) -> None:
    """Estimate vLLM speculative decoding with the distilled student as the teacher's draft: the acceptance rate is
    the student's top-1 agreement with the teacher measured by shadow comparisons.

    Example:  kdgate shadow draft-acceptance --draft-cost 0.11
    """
    from gateway.settings import load_settings
    from gateway.shadow.acceptance import acceptance, speedup, tokens_per_step
    from runtime.store.records import ShadowStore

    url = store_url or load_settings(config).shadow.store_url
    if not url:
        raise typer.BadParameter("no store configured; pass --store-url or set shadow.store_url")
    store = ShadowStore(url)
    try:
        measured = acceptance(list(store.iter_records(since=since, kind="shadow")))
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    finally:
        store.close()
    typer.echo(f"acceptance rate (student top-1 agreement with the teacher): {measured.rate:.3f} over "
               f"{measured.tokens} tokens of {measured.records} shadowed answers")
    typer.echo("| num_speculative_tokens | tokens per teacher step | speed-up |")
    typer.echo("|---|---|---|")
    best = max(range(1, 9), key=lambda k: speedup(measured.rate, k, draft_cost))
    for k in range(1, 9):
        mark = "  ← best" if k == best else ""
        typer.echo(f"| {k} | {tokens_per_step(measured.rate, k):.2f} | "
                   f"{speedup(measured.rate, k, draft_cost):.2f}×{mark} |")


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
    """Scalar columns stay columns; token lists, prompts and constraints are JSON text (nested and ragged: a
    constraint holds a client's whole schema)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise typer.BadParameter("parquet needs pyarrow: pip install 'kdgate[export]'", param_hint="--format") \
            from None
    nested = ("prompt", "student_tokens", "teacher_scores", "teacher_tokens", "constraint", "drift_tokens")
    rows = [row | {key: json.dumps(row[key]) if row[key] is not None else None for key in nested} for row in rows]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return len(rows)
