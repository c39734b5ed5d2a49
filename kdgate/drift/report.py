"""The before/after table of the drift scenario: offline on held-out tickets (the launched slice, the golden set),
and live from the run (drift-sample KL, shadow KL on launched tickets, teacher share, failed requests), against the
targets."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from distill.demo import drift
from gateway.shadow.jobs import JobQueue
from kdgate.drift.traffic import Traffic
from runtime.store.records import ShadowStore

HELD_OUT_LAUNCHED = 200


def offline(models: dict[str, Path], golden_path: Path, threads: int | None = None,
            on_model: Callable[[str], None] = lambda name: None) -> dict[str, dict]:
    """Exact match on held-out launched-product tickets and on the golden set, per model (greedy), with `threads`
    torch CPU threads (None: torch's default); `on_model(name)` as each model starts."""
    import torch
    from transformers.utils import logging as transformers_logging

    from distill.demo.evaluate import evaluate_model
    from distill.evaluate import load
    from distill.online.evaluate import golden_figures, read_golden

    tickets = drift.take(drift.launched("test", 2), HELD_OUT_LAUNCHED)
    golden = read_golden(golden_path)
    transformers_logging.disable_progress_bar()  # its weight-loading bars would cut into the status lines
    if threads:
        torch.set_num_threads(threads)
    results = {}
    for name, folder in models.items():
        on_model(name)
        model, tokenizer = load(folder)
        results[name] = {"launched": evaluate_model(model, tokenizer, tickets)["exact_match"],
                         "golden": golden_figures(model, tokenizer, golden, 64)}
    return results


def live(store_url: str, traffic: Traffic, launch_at: float, promoted_at: float | None, end: float,
         started_wall: float, before_version: str = "initial", settle_s: float = 120.0) -> dict:
    """What the run itself showed: the drift sample's KL (all tickets, a uniform sample whatever route it took) of
    the old student after the launch and of the new one after the promotion, shadow KL of launched tickets served
    by the old and the new student, teacher share of usual traffic before the launch (the target) and of all
    traffic after the promotion, failures. Waits up to `settle_s` for the shadow work still queued."""
    store = ShadowStore(store_url)
    try:
        queued, deadline = JobQueue(store), time.monotonic() + settle_s
        while queued.pending() and time.monotonic() < deadline:
            time.sleep(1.0)
        everything = list(store.iter_records())
    finally:
        store.close()
    records = [record for record in everything if record.kind == "shadow"]
    after = promoted_at if promoted_at is not None else end

    def drift_kl(start: float, stop: float, old: bool) -> tuple[float | None, int]:
        values = [record.mean_kl for record in everything if record.drift_sample and record.mean_kl is not None
                  and (record.student_version == before_version) == old
                  and start <= record.created_at.timestamp() - started_wall < stop]
        return (statistics.fmean(values) if values else None), len(values)

    def kl(start: float, stop: float) -> float | None:
        values = [record.mean_kl for record in records if record.mean_kl is not None
                  and start <= record.created_at.timestamp() - started_wall < stop
                  and any(name in record.prompt[-1]["content"].lower() for name in drift.LAUNCHED_NAMES)]
        return statistics.fmean(values) if values else None

    def share(items) -> float | None:
        return sum(item.route == "teacher" for item in items) / len(items) if items else None

    drift_before, drift_after = drift_kl(launch_at, after, True), drift_kl(after, end, False)
    return {"drift_kl_before": drift_before[0], "drift_answers_before": drift_before[1],
            "drift_kl_after": drift_after[0], "drift_answers_after": drift_after[1],
            "kl_launched_before": kl(launch_at, after), "kl_launched_after": kl(after, end),
            "teacher_share_target": share(traffic.window(0, launch_at)),
            "teacher_share_drifted": share(traffic.window(launch_at, after)),
            "teacher_share_after": share(traffic.window(after, end)),
            "requests": len(traffic.served), "failed": sum(not item.ok for item in traffic.served),
            "failures": [item.error for item in traffic.served if not item.ok][:5]}


def targets(offline_results: dict, live_results: dict, before: str, after: str, jobs: list[dict],
            promoted: str | None) -> list[tuple[str, str, bool]]:
    """(target, measured, met?) for the issue's four targets, zero failed requests, the drift sample's KL falling
    after the promotion and one job for the drift episode (`jobs`: the trainer's; `promoted`: the version the
    episode's job promoted, whose own drift alert, if it fires, is said apart)."""
    by_alert = [job for job in jobs if job["trigger"] == "alert"]
    own = [job for job in by_alert if promoted is not None and about(job) == promoted]
    episode = len(by_alert) - len(own)
    teacher, old, new = (offline_results[name] for name in ("teacher", before, after))
    gap = teacher["launched"] - old["launched"]
    recovered = (new["launched"] - old["launched"]) / gap if gap > 0 else 0.0
    kl_before, kl_after = live_results["kl_launched_before"], live_results["kl_launched_after"]
    kl_drop = 1 - kl_after / kl_before if kl_before and kl_after is not None else None
    golden_drop = usual(old["golden"]) - usual(new["golden"])
    target, final = live_results["teacher_share_target"], live_results["teacher_share_after"]
    return [
        ("recover ≥ 70 % of the gap to the teacher on launched tickets", f"{recovered:.1%}", recovered >= 0.70),
        ("shadow KL on launched tickets falls ≥ 50 %", "—" if kl_drop is None else f"{kl_drop:.1%}",
         kl_drop is not None and kl_drop >= 0.5),
        ("golden-set exact match (usual tickets) drops ≤ 1 point", f"{-100 * golden_drop:+.1f} points",
         golden_drop <= 0.01),
        ("teacher share back within ±3 points of its target", "—" if target is None or final is None else
         f"{100 * final:.1f} % against {100 * target:.1f} %",
         target is not None and final is not None and abs(final - target) <= 0.03),
        ("zero failed client requests", f"{live_results['failed']} of {live_results['requests']}",
         live_results["failed"] == 0),
        ("drift-sample KL falls after the promotion", _drop(live_results["drift_kl_before"],
                                                            live_results["drift_kl_after"]),
         None not in (live_results["drift_kl_before"], live_results["drift_kl_after"])
         and live_results["drift_kl_after"] < live_results["drift_kl_before"]),
        ("one re-distillation job for the drift episode", f"{episode} started by its alerts"
         + (f"; {len(own)} more by {promoted}'s own drift alert" if own else ""), episode == 1 and not own)]


def about(job: dict) -> str | None:
    """The student version the alert that started `job` was about (the drift alert names it)."""
    return job["options"].get("alert", {}).get("labels", {}).get("student_version")


def _drop(before: float | None, after: float | None) -> str:
    return "—" if before is None or after is None else f"{before:.3f} → {after:.3f}"


def usual(golden: dict) -> float:
    """Golden-set exact match over the usual slices (the launched slice is where the new student should gain)."""
    sizes = {name: size for name, size in golden["slice_sizes"].items() if name != drift.SHIFTED_SLICE}
    return sum(golden["by_slice"][name] * size for name, size in sizes.items()) / sum(sizes.values())
