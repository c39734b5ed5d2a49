"""One admin API call from the command line (`kdgate student`, `kdgate trainer`): a bearer token, and every failure
a one-line message on stderr with exit code 1 instead of a traceback."""

from __future__ import annotations

import typer


def admin_call(method: str, base_url: str, path: str, token: str | None, body: dict | None, *, service: str,
               start_hint: str, timeout: float) -> dict:
    """`path` under `base_url`; `service` names who answers in the messages (the gateway, the trainer)."""
    import httpx

    try:
        response = httpx.request(method, base_url.rstrip("/") + path, json=body, timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    except httpx.HTTPError as error:
        typer.echo(f"kdgate: cannot reach {service} at {base_url} ({error}); {start_hint}", err=True)
        raise typer.Exit(1) from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        typer.echo(f"kdgate: {service} refused ({response.status_code}): {message}", err=True)
        raise typer.Exit(1)
    return response.json()
