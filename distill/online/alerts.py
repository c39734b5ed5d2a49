"""Alertmanager's webhook payload (version "4", as Alertmanager 0.25 sends it) and which alerts start a job.

    {"version": "4", "groupKey": ..., "truncatedAlerts": 0, "status": "firing", "receiver": ...,
     "groupLabels": {...}, "commonLabels": {...}, "commonAnnotations": {...}, "externalURL": ...,
     "alerts": [{"status": "firing", "labels": {...}, "annotations": {...}, "startsAt": ..., "endsAt": ...,
                 "generatorURL": ..., "fingerprint": ...}]}

A job starts for each *firing* alert whose labels carry every selector label (default `action="redistill"`, the
label the project's drift rules carry). Alertmanager sends a group again on every `repeat_interval` and retries a
delivery it thinks failed, so an alert is known by its `groupKey` + `fingerprint` + `startsAt`: the same firing
seen twice makes one job. A resolved alert starts nothing; if no job was made for its firing yet (that delivery
is late, or was lost), it is recorded as a skipped job under the same key, so that a stale firing arriving after
its resolve finds it and starts nothing either.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Alert(BaseModel):
    model_config = ConfigDict(extra="allow")  # fields later Alertmanagers add are kept, not refused

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = Field(min_length=1)  # noqa: N815 — Alertmanager's names
    endsAt: str | None = None  # noqa: N815
    generatorURL: str | None = None  # noqa: N815
    fingerprint: str = Field(min_length=1)


class WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: Literal["4"]
    groupKey: str  # noqa: N815
    truncatedAlerts: int = Field(default=0, ge=0)  # noqa: N815
    status: Literal["firing", "resolved"]
    receiver: str
    groupLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonAnnotations: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    externalURL: str = ""  # noqa: N815
    alerts: list[Alert]


def selected(payload: WebhookPayload, selector: dict[str, str], status: str = "firing") -> list[Alert]:
    """The alerts in `status` that carry every selector label."""
    return [alert for alert in payload.alerts if alert.status == status
            and all(alert.labels.get(name) == value for name, value in selector.items())]


def alert_key(payload: WebhookPayload, alert: Alert) -> str:
    """One firing of one alert, whatever delivery carries it."""
    return f"alert:{payload.groupKey}|{alert.fingerprint}|{alert.startsAt}"


def job_options(payload: WebhookPayload, alert: Alert) -> dict:
    """What the job records about the alert that started it."""
    return {"alert": {"name": alert.labels.get("alertname"), "labels": alert.labels,
                      "annotations": alert.annotations, "startsAt": alert.startsAt,
                      "receiver": payload.receiver, "generatorURL": alert.generatorURL}}
