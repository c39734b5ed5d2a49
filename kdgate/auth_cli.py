"""`kdgate auth`: make API keys and the digests the gateway's configuration stores."""

from __future__ import annotations

import hashlib
import sys

import typer

app = typer.Typer(help="API keys: make one, or hash an existing secret for the gateway's configuration.",
                  no_args_is_help=True)


@app.command("new-key")
def new_key_command(
    name: str = typer.Option(..., help="who holds the key (in logs and metrics labels)"),
    permission: list[str] = typer.Option([], help="force_route and/or prompt_logprobs (repeat)"),
) -> None:
    """Print a fresh random key (on stderr, shown once) and its keys-file entry (on stdout).

    Entries appended to one file make a keys file (`auth.keys_file`); under `auth.keys:` in settings, indent them.

    Example:  kdgate auth new-key --name support-app --permission force_route >> keys.yaml
    """
    import yaml
    from pydantic import ValidationError

    from gateway.settings import KeySettings
    from runtime.credentials import new_key

    key, digest = new_key()
    try:
        entry = KeySettings(name=name, sha256=digest, permissions=permission)
    except ValidationError as error:
        problem = error.errors()[0]
        option = "--permission" if problem["loc"][0] == "permissions" else "--name"
        raise typer.BadParameter(problem["msg"].removeprefix("Value error, "), param_hint=option) from None
    typer.echo(f"key (give it to {name}; it is not stored anywhere): {key}", err=True)
    typer.echo(yaml.safe_dump([entry.model_dump(exclude_none=True)], sort_keys=False), nl=False)


@app.command("hash")
def hash_command() -> None:
    """Read a secret on standard input and print its SHA-256, for `auth.admin_sha256` or `auth.metrics_sha256`.

    Example:  kdgate auth hash < /run/secrets/kdgate-admin
    """
    secret = sys.stdin.read().strip()
    if not secret:
        raise typer.BadParameter("standard input was empty; pipe the secret in")
    typer.echo(hashlib.sha256(secret.encode()).hexdigest())
