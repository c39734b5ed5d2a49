"""The scenario's timeline, sampled every few seconds from the real parts: the divergence (the active version's on
the drift sample, and the shadowed answers') and teacher share Prometheus computes from the gateway's metrics,
the drift alerts' states, the gateway's active student version, and the trainer's newest job. Drawn as one PNG."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

DRIFT_ALERTS = ("KdgateStudentDivergenceHigh", "KdgateTeacherShareHigh")


@dataclass
class Sample:
    t: float
    phase: str
    shadow_kl: float | None
    teacher_share: float | None
    alert: str  # inactive | pending | firing (the most advanced of the drift alerts)
    active: str | None
    job: str | None  # "<id> <state> <step>"
    job_id: int | None = None
    drift_kl: float | None = None  # the active version's, on the drift sample
    shadow_backlog: float | None = None  # shadow jobs stored and not yet scored by the teacher


def alert_signals(sample: Sample) -> str:
    """The drift alerts' two signals, rounded: the active version's drift-sample KL to 3 significant digits, the
    teacher share in percent."""
    kl = "—" if sample.drift_kl is None else f"{sample.drift_kl:.3g}"
    share = "—" if sample.teacher_share is None else f"{100 * sample.teacher_share:.1f} %"
    return f"drift KL {kl}, teacher share {share}"


def backlog(sample: Sample) -> str:
    """The shadow jobs waiting for the teacher, when any: the drift sample's newest answers are among them, so its
    KL lags by this much (on a slow teacher, minutes)."""
    if not sample.shadow_backlog:
        return ""
    return f"{sample.shadow_backlog:.0f} shadow job{'' if sample.shadow_backlog == 1 else 's'} waiting for the teacher"


def sample(urls: dict[str, str], admin_key: str, t: float, phase: str) -> Sample:
    prometheus = urls["prometheus"]

    def value(query: str) -> float | None:
        try:
            result = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=5).json()
            rows = result["data"]["result"]
            return float(rows[0]["value"][1]) if rows else None
        except (httpx.HTTPError, KeyError, ValueError, IndexError):
            return None

    alert = "inactive"
    try:
        for item in httpx.get(f"{prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]:
            if item["labels"].get("alertname") in DRIFT_ALERTS:
                alert = "firing" if "firing" in (alert, item["state"]) else item["state"]
    except (httpx.HTTPError, KeyError, ValueError):
        pass
    try:
        active = httpx.get(f"{urls['gateway']}/admin/v1/students/status", timeout=5).json()["active"]
    except (httpx.HTTPError, KeyError, ValueError):
        active = None
    try:
        jobs = httpx.get(f"{urls['trainer']}/v1/jobs?limit=1", timeout=5,
                         headers={"Authorization": f"Bearer {admin_key}"}).json()["jobs"]
        job = f"{jobs[0]['id']} {jobs[0]['state']} {jobs[0]['step'] or ''}".strip() if jobs else None
        job_id = jobs[0]["id"] if jobs else None
    except (httpx.HTTPError, KeyError, ValueError):
        job, job_id = None, None
    drift_kl = value(f'kdgate:drift_kl:mean15m{{student_version="{active}"}}') if active else None
    return Sample(t, phase, value("kdgate:shadow_kl:mean15m"), value("max(kdgate_teacher_fraction)"), alert,
                  active, job, job_id, drift_kl, value("max(kdgate_shadow_pending_jobs)"))


def plot(samples: list[Sample], marks: dict[str, float], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [s.t / 60 for s in samples]
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(10, 7), sharex=True,
                                                 gridspec_kw={"height_ratios": [3, 3, 1.4]})
    top.plot(times, [s.drift_kl for s in samples], color="tab:red", label="drift sample, active version")
    top.plot(times, [s.shadow_kl for s in samples], color="grey", linestyle="--", label="shadowed answers")
    top.set_ylabel("KL\n(nats/token)")
    top.legend(loc="upper left", fontsize=8)
    middle.plot(times, [s.teacher_share for s in samples], color="tab:blue")
    middle.set_ylabel("teacher share")
    versions = sorted({s.active for s in samples if s.active}, key=lambda v: (v != "initial", v))
    bottom.step(times, [versions.index(s.active) if s.active in versions else None for s in samples], where="post",
                color="tab:green", label="active student")
    bottom.step(times, [{"inactive": -0.3, "pending": -0.15, "firing": 0.0}[s.alert] - 0.5 for s in samples],
                where="post", color="tab:orange", label="drift alert (low→firing)")
    bottom.set_yticks(range(len(versions)), versions)
    bottom.legend(loc="upper left", fontsize=8)
    bottom.set_xlabel("minutes")
    for axis in (top, middle, bottom):
        for name, at in marks.items():
            axis.axvline(at / 60, color="grey", linestyle=":", linewidth=1)
            if axis is top:
                axis.annotate(name, (at / 60, 1.0), xycoords=("data", "axes fraction"), fontsize=8, rotation=90,
                              va="top", ha="right")
    figure.suptitle("kdgate demo drift: launch → drift alert → re-distillation → promotion")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def rows(samples: list[Sample]) -> list[dict]:
    return [asdict(s) for s in samples]
