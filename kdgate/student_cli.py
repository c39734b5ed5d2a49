"""`kdgate student`: student versions through a running gateway's admin API (`/admin/v1/students`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from kdgate.admin_call import admin_call

app = typer.Typer(help="Student versions: register, promote (or canary), roll back, and watch them serve.",
                  no_args_is_help=True)

URL = typer.Option("http://127.0.0.1:8000", envvar="KDGATE_GATEWAY_URL", help="the gateway (any replica)")
ADMIN_KEY = typer.Option(None, envvar="KDGATE_ADMIN_KEY", help="the admin credential (none: an open local gateway)")


def _call(method: str, url: str, path: str, admin_key: str | None, body: dict | None = None) -> dict:
    return admin_call(method, url, f"/admin/v1/students{path}", admin_key, body, service="the gateway",
                      start_hint="start it (`./dev serve`) or set --url", timeout=600)


def _print_slot(slot: dict) -> None:
    from kdgate import tables

    canary = f", canary {slot['canary']} at {slot['canary_fraction']:.0%}" if slot.get("canary") else ""
    typer.echo(f"slot revision {slot['revision']}: active {slot['active'] or tables.MISSING}{canary}")
    figures = slot.get("this_process") or {}
    if not figures:
        return
    rows = tables.table("version", "role", "requests", "error rate", "teacher share", "p99 TTFT ms",
                        "mean shadow KL", title="this gateway process, since each version began serving here")
    for name, row in figures.items():
        tables.add_row(rows, name, row["role"], str(row.get("requests", 0)),
                       tables.figure(row.get("error_rate"), ".3f"), tables.figure(row.get("teacher_share"), ".3f"),
                       tables.figure(row.get("p99_ttft_ms"), ".1f"), tables.figure(row.get("mean_shadow_kl"), ".4f"))
    judgment = slot.get("canary_judgment")
    tables.show(rows, _canary_rules(slot["canary"], slot["active"], judgment) if judgment else [])


def _canary_rules(canary: str, active: str, judgment: dict) -> list[tuple[str, str]]:
    """What the gateway judges the canary on (the figures in the table above), each rule with its threshold, and the
    verdict it reaches now."""
    rules, over = judgment["rules"], f"above {active}'s"
    latency, kl, promote = rules["max_ttft_p99_ratio"], rules["max_kl_increase"], rules["clean_window_s"]
    unset = "not judged (`students.canary.{}` is null)"
    return [
        ("judged", f"canary {canary} against {active} once it has served {rules['min_requests']} requests; "
                   "rolled back on any rule below"),
        ("error rate", f"{over} + {rules['max_error_rate_increase']:g}"),
        ("teacher share", f"{over} + {rules['max_teacher_share_increase']:g}"),
        ("p99 TTFT", unset.format("max_ttft_p99_ratio") if latency is None else
         f"{over} × {latency:g} + {1000 * rules['ttft_slack_s']:.0f} ms, each over {rules['min_requests']} answers"),
        ("shadow KL", unset.format("max_kl_increase") if kl is None else
         f"{over} + {kl:g}, once both have shadowed answers"),
        ("promoted", f"by hand: `kdgate student promote {canary}`" if promote is None else
         f"automatically after {promote:g} s healthy"),
        ("verdict", f"{judgment['action']}: {judgment['reason']}"),
    ]


@app.command("list")
def list_command(url: str = URL, admin_key: str | None = ADMIN_KEY) -> None:
    """Every registered version with its state, source and notes, and which one serves.

    Example:  kdgate student list
    """
    from kdgate import tables

    answer = _call("GET", url, "", admin_key)
    rows, details = tables.table("name", "state", "kind", "previous", "created UTC"), []
    for version in answer["versions"]:
        tables.add_row(rows, version["name"], version["state"], version["kind"], version["previous"] or "",
                       (version["created_at"] or "")[:19].replace("T", " "))
        details.append((version["name"], "source", _source(version)))
        if version["notes"]:
            details.append(("", "notes", version["notes"]))
    tables.show(rows, details)
    _print_slot(answer["slot"])


def _source(version: dict) -> str:
    """Where the version's weights are: a folder (model or adapter), or a server of its own and the model it serves."""
    return version["model_dir"] or version["adapter_path"] or f"{version['base_url']} (model {version['served_model']})"


@app.command()
def status(url: str = URL, admin_key: str | None = ADMIN_KEY) -> None:
    """The slot; per serving version the figures a canary is judged on, and its rules.

    Example:  kdgate student status
    """
    _print_slot(_call("GET", url, "/status", admin_key))


@app.command()
def register(
    name: str = typer.Argument(..., help="the version's name (letters, digits, `_.-`)"),
    model_dir: Path | None = typer.Option(None, "--model", help="a model folder (local students)"),
    adapter: str | None = typer.Option(None, help="a peft LoRA adapter folder (vLLM reads it on its own disk)"),
    base_url: str | None = typer.Option(None, help="a server of its own, ending in /v1 (blue/green)"),
    served_model: str | None = typer.Option(None, help="with --base-url: the model id it serves"),
    policy_file: Path | None = typer.Option(None, help="the routing policy calibrated for this student"),
    figures: str | None = typer.Option(None, help="JSON: what it was admitted with"),
    notes: str | None = typer.Option(None),
    url: str = URL,
    admin_key: str | None = ADMIN_KEY,
) -> None:
    """Register a candidate version (it serves nothing until promoted).

    Example:  kdgate student register v2 --model runs/distill-kd/model --policy-file runs/router/router-policy.json
    """
    try:
        parsed = json.loads(figures) if figures else None
    except json.JSONDecodeError as error:
        raise typer.BadParameter(f"not JSON: {error}", param_hint="--figures") from None
    body = {"name": name, "model_dir": str(model_dir.resolve()) if model_dir else None, "adapter_path": adapter,
            "base_url": base_url, "served_model": served_model,
            "policy_file": str(policy_file.resolve()) if policy_file else None, "figures": parsed, "notes": notes}
    version = _call("POST", url, "", admin_key, {key: value for key, value in body.items() if value is not None})
    typer.echo(f"registered {version['name']} ({version['kind']}) as a candidate; promote it with "
               f"`kdgate student promote {version['name']}`")


@app.command()
def promote(
    name: str = typer.Argument(..., help="a registered version"),
    canary: float | None = typer.Option(None, min=0.0, max=1.0, help="serve it to this share of student-served "
                                        "requests beside the active version, instead of to all"),
    url: str = URL,
    admin_key: str | None = ADMIN_KEY,
) -> None:
    """Put a version into service, whole or as a canary; answers once the gateway serves it.

    Example:  kdgate student promote v2 --canary 0.1
    """
    body = {"canary_fraction": canary} if canary is not None else None
    _print_slot(_call("POST", url, f"/{name}/promote", admin_key, body))


@app.command()
def rollback(
    reason: str = typer.Option("rolled back by hand", help="kept with the version"),
    url: str = URL,
    admin_key: str | None = ADMIN_KEY,
) -> None:
    """Back to the previous active version, from any state (a canary is dropped, the active one stays).

    Example:  kdgate student rollback --reason "answers drifted"
    """
    _print_slot(_call("POST", url, "/rollback", admin_key, {"reason": reason}))
