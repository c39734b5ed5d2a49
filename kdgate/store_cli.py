"""`kdgate store`: the record store's schema, migrated once before the services start (the chart's hook Job)."""

from __future__ import annotations

import typer

app = typer.Typer(help="The record store the gateway and the trainer share: bring its schema up to date.",
                  no_args_is_help=True)


@app.command("migrate")
def migrate_command(
    store_url: str = typer.Option(..., envvar="KDGATE_SHADOW__STORE_URL",
                                  help="SQLAlchemy URL of the store (the gateway's shadow.store_url)"),
) -> None:
    """Bring the store's schema to the newest migration and print its revision; a no-op when it is there already.

    The gateway and the trainer migrate at start as well (one at a time on PostgreSQL); running this first, as the
    chart's pre-install/pre-upgrade hook does, makes a failing migration stop the release instead of its pods.

    Example:  kdgate store migrate --store-url sqlite:///runs/shadow.db
    """
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from runtime.redact import redact
    from runtime.store.records import ShadowStore

    try:
        store = ShadowStore(store_url)
        try:
            with store.engine.connect() as connection:
                revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        finally:
            store.close()
    except SQLAlchemyError as error:
        typer.echo(f"kdgate: cannot migrate the store at {redact(store_url)}: {redact(str(error).splitlines()[0])}; "
                   "check the URL and that the database accepts connections", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"store at revision {revision} (the newest)")
