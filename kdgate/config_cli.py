"""`kdgate config`: the settings a gateway would start with, and the generated settings reference."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Show the gateway's resolved settings, or write the settings reference page.",
                  no_args_is_help=True)


@app.command()
def show(config: Path | None = typer.Option(None, exists=True, dir_okay=False, help="YAML settings file, as "
                                            "`kdgate serve --config` takes it")) -> None:
    """Print, as YAML, the settings `kdgate serve` would use with this environment and file (secrets masked).

    Example:  KDGATE_ROUTING__HANDOFF__MIN_PROB=0.8 kdgate config show --config deploy/kdgate-vllm.yaml
    """
    import yaml

    from gateway.settings import load_settings
    from kdgate.cli import settings_or_exit
    from runtime.redact import redact_values

    settings = settings_or_exit(lambda: load_settings(config))
    shown = redact_values(settings.model_dump(mode="json"))  # SecretStr is masked by pydantic, URL passwords here
    typer.echo(yaml.safe_dump(shown, sort_keys=False), nl=False)


@app.command()
def docs(
    out: Path | None = typer.Option(None, dir_okay=False, help="write the page here (default: print it)"),
    check: bool = typer.Option(False, help="exit 1 when --out differs from what would be written"),
) -> None:
    """Render docs/configuration.md from the settings classes.

    Example:  kdgate config docs --out docs/configuration.md
    """
    from kdgate.config_docs import page

    text = page()
    if out is None:
        typer.echo(text, nl=False)
        return
    if check:
        if not out.is_file() or out.read_text() != text:
            typer.echo(f"{out} is out of date; regenerate it with `kdgate config docs --out {out}`", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out} is up to date")
        return
    out.write_text(text)
    typer.echo(f"wrote {out}")
