"""`kdgate demo drift`: the re-distillation loop closed on a shift the teacher handles and the student does not.

    usual traffic ──launch──▶ launched products too ──▶ drift alert (Prometheus) ──▶ Alertmanager webhook ──▶ job
      ──▶ gate ──▶ promotion (the gateway's student slot) ──▶ divergence falls          (no call made by hand)

The gateway serves the pre-launch student (distilled without the launched products) beside the teacher; the
traffic is the usual stream, then, from the launch, half launched-product tickets. The report compares the
pre-launch student, the re-distilled one and the teacher offline, and the run's own figures with the targets.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from kdgate.drift.progress import Ticker, clock_time, log_progress
from kdgate.drift.report import live, offline, targets
from kdgate.drift.stack import Stack, start_stack, store_url
from kdgate.drift.traffic import Traffic
from kdgate.drift.watch import Sample, alert_signals, backlog, plot, rows, sample
from runtime.demo import ARTIFACTS_DIR, DEMO_PRELAUNCH_STUDENT_DIR, DEMO_TEACHER_DIR


@dataclass(frozen=True)
class DriftSettings:
    out: Path = Path("runs/drift")
    # the pair, Hugging Face model folders with one tokenizer: the teacher (the gateway's, the replay cache's and
    # the report's) and the student the gateway serves first, which the trainer's job re-distils
    teacher: Path = DEMO_TEACHER_DIR
    student: Path = DEMO_PRELAUNCH_STUDENT_DIR
    rate: float = 2.0  # client requests per second, all along
    usual_s: float = 90.0  # usual traffic before the launch
    launch_share: float = 0.5  # share of launched-product tickets after the launch
    after_s: float = 150.0  # traffic after the promotion, to see divergence fall
    max_wait_s: float = 900.0  # from the launch to a promotion, at most
    window: str = "2m"  # the rules' 15m windows, compressed
    hold: str = "20s"  # the rules' `for:`, compressed
    sample_rate: float = 0.5  # shadow share of student-served answers
    # the pre-launch student's handoff share on usual tickets, measured for the demo pair (benchmarks/teacher_share.py);
    # another pair has its own
    teacher_target: float = 0.36
    # the handoff's floor (`routing.handoff.min_prob`; None: the gateway's 0.9): a student whose answers all hold one
    # token it is unsure of (SmolLM2's on the priority, p ≈ 0.45) hands every answer off at 0.9
    handoff_floor: float | None = None
    train_steps: int = 800
    # `key=value` overrides of the job's recipe (distill/configs/redistill.yaml, sized for the demo student), after
    # train_steps: another pair's learning rate or batch size
    train_overrides: tuple[str, ...] = ()
    replay_prompts: int = 2000  # the pre-launch student's distillation data, rehearsed beside the live records
    # a teacher cache of pre-launch answers made already (`kdgate demo prelaunch-student`'s WORK/cache, the student's
    # own distillation data) to rehearse instead of making OUT/replay-cache: a slow teacher's answers are not made twice
    replay_from: Path | None = None
    every_s: float = 5.0  # timeline sampling
    min_records: int = 450  # the job's `dataset.min_records`
    gather_wait_s: float = 300.0  # how long the job waits for them
    golden_examples: int | None = None  # the gate's golden set, first N (None: all 500)
    offline: bool = True  # evaluate the models offline for the report (a few minutes)
    # torch CPU threads of every process that runs a model: the teacher making the replay cache, the gateway, the
    # job, the offline evaluation. They share the machine, so 1 each (more only helps on an otherwise idle box).
    threads: int = 1
    status_every_s: float = 20.0  # a status line whenever nothing was said for this long


def resolved(settings: DriftSettings) -> DriftSettings:
    """`settings` with absolute folders: drift.json names them for whoever reads the run later, from anywhere
    (benchmarks/redistill_datasets.py retrains on the run's pair)."""
    return replace(settings, out=settings.out.resolve(), teacher=settings.teacher.resolve(),
                   student=settings.student.resolve(),
                   replay_from=settings.replay_from.resolve() if settings.replay_from else None)


def run(settings: DriftSettings, say=print) -> dict:
    settings = resolved(settings)
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    with Ticker(say, settings.status_every_s) as ticker:
        replay = settings.replay_from or replay_cache(out, settings.teacher, settings.replay_prompts,
                                                      settings.threads, ticker)
        ticker.say(f"starting the gateway (pre-launch student), the trainer, Alertmanager and Prometheus in {out} "
                   "...")
        ticker.enter("starting the stack")

        def starting(name: str, log: Path) -> None:
            ticker.update(lambda: f"waiting for {name} to be ready (log: {log})")

        stack = start_stack(out / "stack", settings.teacher, settings.student, settings.window, settings.hold,
                            settings.sample_rate, handoff(settings), _trainer(settings, replay),
                            settings.threads, starting)
        ticker.say(f"watch the trainer's jobs: {stack.watch_command()}")
        previous = signal.signal(signal.SIGTERM, _exit)  # a plain SIGTERM would leave the stack's servers running
        try:
            report = asyncio.run(_scenario(settings, stack, ticker))
        finally:
            ticker.enter("stopping the stack")
            stack.stop()
            signal.signal(signal.SIGTERM, previous)
        spent = ticker.durations()
        ticker.say("wall time: " + ", ".join(f"{phase} {clock_time(seconds)}" for phase, seconds in spent.items())
                   + f"; total {clock_time(sum(spent.values()))}")
        return report


def handoff(settings: DriftSettings) -> dict:
    """The gateway's `routing.handoff` settings for the scenario."""
    floor = {} if settings.handoff_floor is None else {"min_prob": settings.handoff_floor}
    return {"target_teacher_fraction": settings.teacher_target, **floor}


def _trainer(settings: DriftSettings, replay: Path) -> dict:
    """The trainer's settings for the scenario (beside the stack's own: store, keys, gateway)."""
    return {"train": {"threads": settings.threads,
                      "overrides": [f"steps={settings.train_steps}", *settings.train_overrides]},
            "dataset": {"min_records": settings.min_records, "gather_wait_s": settings.gather_wait_s,
                        "replay_cache": str(replay)},
            "golden": {"examples": settings.golden_examples},
            "handoff_target_teacher_fraction": settings.teacher_target}


def _exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def check_replay_from(cache: Path, teacher: Path) -> None:
    """ValueError unless `cache` is a teacher cache `teacher` made, with answers in it: the job trains on its token
    ids as the student's own, and the teacher's scores as this teacher's."""
    from distill.data.cache import Manifest
    from distill.data.make import Teacher
    from runtime.tokenizer_hash import tokenizer_hash

    made = Manifest.load(cache)
    if made.teacher != Teacher(teacher).name:
        raise ValueError(f"{cache} was made by the teacher {made.teacher}, not by {Teacher(teacher).name}: give a "
                         "cache of this teacher's pre-launch answers, or leave the option out to make one")
    if made.tokenizer_hash != tokenizer_hash(teacher):
        raise ValueError(f"{cache} holds token ids of another tokenizer than the teacher {teacher}'s")
    if made.kept == 0:
        raise ValueError(f"{cache} holds no kept answer (an interrupted `kdgate distill generate`? run it again to "
                         "resume it)")


def replay_cache(out: Path, teacher: Path, prompts: int, threads: int, ticker: Ticker) -> Path:
    """A sample of the pre-launch student's own distillation data (`teacher`'s answers to pre-launch tickets): what
    the trainer rehearses so that learning the launch does not cost what the student knew (kept between runs of
    the same teacher, resumed when short of `prompts`; one made by another is refused, its token ids may be another
    tokenizer's)."""
    from distill.data.cache import Manifest
    from distill.data.make import Teacher

    cache = out / "replay-cache"
    ticker.enter("replay cache")
    if (cache / "manifest.json").is_file():
        made = Manifest.load(cache)
        if made.teacher != Teacher(teacher).name:
            raise SystemExit(f"kdgate: the replay cache {cache} was made by the teacher {made.teacher}, not by "
                             f"{Teacher(teacher).name}; give another --out, or delete {cache}")
        if made.rows >= prompts:  # an interrupted one says 0 rows (its manifest is written first): resumed below
            ticker.say(f"reusing the replay cache {cache}")
            return cache
    log = out / "replay-cache.log"
    ticker.say(f"making the replay cache: the teacher answers {prompts} pre-launch tickets (80 s for the demo's on "
               f"an idle 2-core machine; log: {log}) ...")
    ticker.update(lambda: log_progress(log))
    kdgate = [sys.executable, "-m", "kdgate.cli"]
    commands = [kdgate + ["demo", "prelaunch-prompts", "--count", str(prompts), "--out",
                          str(out / "replay-prompts.jsonl")],
                kdgate + ["distill", "generate", "--prompts", str(out / "replay-prompts.jsonl"), "--top-k", "20",
                          "--teacher-dir", str(teacher), "--threads", str(threads), "--out", str(cache)]]
    with log.open("w") as output:
        for command in commands:
            done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                raise SystemExit(f"kdgate: making the replay cache failed (exit {done.returncode}); the end of its "
                                 f"log, {log}:\n{log.read_text()[-2000:]}\nrun `kdgate demo drift` again to resume")
    return cache


async def _scenario(settings: DriftSettings, stack: Stack, ticker: Ticker) -> dict:
    traffic = Traffic(stack.urls["gateway"], settings.rate)
    started_wall = time.time()
    stop = asyncio.Event()
    load = asyncio.create_task(traffic.run(stop))
    samples: list[Sample] = []
    marks: dict[str, float] = {}
    phase = "usual"

    async def look() -> None:
        while True:
            now = time.monotonic() - traffic.started
            samples.append(await asyncio.to_thread(sample, stack.urls, stack.admin_key, now, phase))
            await asyncio.sleep(settings.every_s)

    watcher = asyncio.create_task(look())
    live_status = _live_status(samples, traffic, stack)
    ticker.enter("usual traffic", live_status)
    ticker.say(f"usual traffic at {settings.rate:g} req/s for {settings.usual_s:g} s")
    await asyncio.sleep(settings.usual_s)
    launch_at = time.monotonic() - traffic.started
    marks["launch"] = launch_at
    traffic.launched_share, phase = settings.launch_share, "launched"
    ticker.enter("launched traffic, waiting for the drift alert", live_status)
    ticker.say(f"launch: {settings.launch_share:.0%} of tickets are about the launched products from now on")
    promoted_at = await _until_promoted(settings, stack, samples, marks, ticker, live_status)
    phase = "after"
    if promoted_at is not None:
        ticker.enter("traffic after the promotion", live_status)
        await asyncio.sleep(settings.after_s)
    end = time.monotonic() - traffic.started
    stop.set()
    await load
    watcher.cancel()
    return await asyncio.to_thread(_report, settings, stack, traffic, samples, marks, launch_at, promoted_at, end,
                                   started_wall, ticker)


async def _until_promoted(settings: DriftSettings, stack: Stack, samples: list[Sample], marks: dict[str, float],
                          ticker: Ticker, live_status: Callable[[], str]) -> float | None:
    """From the launch: the alert, the job, then the promotion (its time) or the job's end without one (None)."""
    deadline = time.monotonic() + settings.max_wait_s
    seen_alert = seen_job = False
    while time.monotonic() < deadline:
        await asyncio.sleep(settings.every_s)
        last = samples[-1] if samples else None
        if last is None:
            continue
        if last.alert == "firing" and not seen_alert:
            seen_alert, marks["alert firing"] = True, last.t
            ticker.say(f"{last.t:.0f} s: drift alert firing ({alert_signals(last)})")
        if last.job and not seen_job:
            seen_job, marks["job"] = True, last.t
            ticker.enter("re-distillation job", live_status)
            ticker.say(f"{last.t:.0f} s: re-distillation job {last.job}\n"
                       f"    its log: {stack.job_log(last.job_id)}\n"
                       f"    watch it: {stack.watch_command(f'job {last.job_id}')}")
        if last.active and last.active != "initial":
            marks["promoted"] = last.t
            ticker.say(f"{last.t:.0f} s: promoted {last.active}; {settings.after_s:g} s more traffic")
            return last.t
        if last.job and any(state in last.job for state in (" rejected", " failed", " skipped")):
            ticker.say(f"{last.t:.0f} s: the job ended without a promotion ({last.job}); see "
                       f"{stack.watch_command(f'job {last.job_id}')}")
            return None
    ticker.say(f"no promotion within {settings.max_wait_s:g} s of the launch; see {stack.watch_command()}")
    return None


def _live_status(samples: list[Sample], traffic: Traffic, stack: Stack) -> Callable[[], str]:
    """The status line's detail while traffic runs: requests so far, the alert, the job and what its log says."""

    def detail() -> str:
        failed = sum(not item.ok for item in traffic.served)
        parts = [f"{len(traffic.served)} requests ({failed} failed)"]
        last = samples[-1] if samples else None
        if last is not None:
            parts.append(f"alert {last.alert} ({alert_signals(last)})")
            if waiting := backlog(last):
                parts.append(waiting)
            if last.job:
                step = last.job.split()[-1]  # "gather: 246 of 450 records" reads once, not "gather: gather: ..."
                doing = log_progress(stack.job_log(last.job_id)).removeprefix(f"{step}: ")
                parts.append(f"job {last.job}" + (f": {doing}" if doing else ""))
        return "; ".join(parts)

    return detail


def _report(settings: DriftSettings, stack: Stack, traffic: Traffic, samples, marks, launch_at, promoted_at, end,
            started_wall, ticker: Ticker) -> dict:
    import httpx

    out = settings.out

    def trainer_jobs() -> list[dict]:
        return httpx.get(f"{stack.urls['trainer']}/v1/jobs?limit=5", timeout=10,
                         headers={"Authorization": f"Bearer {stack.admin_key}"}).json()["jobs"]

    jobs = trainer_jobs()
    promoted = next((job for job in jobs if job["state"] == "succeeded"), None)
    models = {"teacher": settings.teacher, "pre-launch student": settings.student}
    if promoted is not None:
        models["re-distilled student"] = stack.job_log(promoted["id"]).parent / "out" / "model"
    measured = {}
    if settings.offline:
        evaluating = {"model": ""}
        ticker.enter("offline evaluation", lambda: evaluating["model"])
        ticker.say(f"evaluating the models offline on held-out tickets ({settings.threads} torch thread(s)) ...")
        measured = offline(models, ARTIFACTS_DIR / "golden.jsonl", settings.threads,
                           on_model=lambda name: evaluating.update(model=name))
    ticker.enter("report")
    ran = live(store_url(stack.folder), traffic, launch_at, promoted_at, end, started_wall)
    jobs = trainer_jobs()  # again, after the shadow work settled: a job an alert started late counts too
    checks = targets(measured, ran, "pre-launch student", "re-distilled student", jobs, promoted["candidate"]) \
        if promoted and measured else []
    plot(samples, marks, out / "drift.png")
    report = {"settings": {key: str(value) for key, value in asdict(settings).items()}, "marks": marks,
              "offline": measured, "live": ran, "targets": checks, "jobs": jobs, "timeline": rows(samples),
              "wall_s": ticker.durations()}
    (out / "drift.json").write_text(json.dumps(report, indent=1, default=str))
    _print(measured, ran, checks, marks, ticker.say)
    ticker.say(jobs_line(jobs))
    ticker.say(f"timeline: {out / 'drift.png'}; everything: {out / 'drift.json'}")
    return report


def _print(measured: dict, ran: dict, checks: list, marks: dict, say) -> None:
    say("")
    say("| model | launched-product tickets (exact match) | golden set | golden: launched slice |")
    say("|---|---|---|---|")
    for name, figures in measured.items():
        golden = figures["golden"]
        say(f"| {name} | {figures['launched']:.1%} | {golden['exact_match']:.1%} | "
            f"{golden['by_slice'].get('launched', float('nan')):.1%} |")
    say("")
    say("| live, from the run | before the promotion | after |")
    say("|---|---|---|")
    drift = [_kl(ran[f"drift_kl_{when}"], ran[f"drift_answers_{when}"]) for when in ("before", "after")]
    say(f"| drift-sample KL, all tickets, whatever route (nats/token; answers) | {drift[0]} | {drift[1]} |")
    kl = ("—" if ran["kl_launched_before"] is None else f"{ran['kl_launched_before']:.3f}",
          "—" if ran["kl_launched_after"] is None else f"{ran['kl_launched_after']:.3f}")
    say(f"| shadow KL, launched tickets served by the student (nats/token) | {kl[0]} | {kl[1]} |")
    shares = [ran[key] for key in ("teacher_share_target", "teacher_share_drifted", "teacher_share_after")]
    say(f"| teacher share (usual traffic before the launch: {_pct(shares[0])}) | {_pct(shares[1])} | "
        f"{_pct(shares[2])} |")
    say(f"| failed client requests | {ran['failed']} of {ran['requests']} | |")
    say("")
    say("marks (s): " + ", ".join(f"{name} {at:.0f}" for name, at in marks.items()))
    for target, value, met in checks:
        say(f"{'met ' if met else 'MISSED'} {target}: {value}")


def jobs_line(jobs: list[dict]) -> str:
    """The run's jobs, oldest first, each with its trigger and, where the gate refused its candidate, the checks
    that failed with both models' figures: why no promotion came is said where the run ends."""
    return "re-distillation jobs: " + ("; ".join(_job(job) for job in reversed(jobs)) or "none")


def _job(job: dict) -> str:
    trigger = f"trigger {job['trigger']}" + (f": {_alert_of(job)}" if job["trigger"] == "alert" else "")
    gate = (job.get("figures") or {}).get("gate") or {}
    failed = [check for check in gate.get("checks", []) if not check["passed"]]
    refused = "; the gate failed " + ", ".join(f"{check['name']} {check['active']:.3f} → {check['candidate']:.3f} "
                                               f"(needs {check['rule']})" for check in failed) if failed else ""
    return f"{job['id']} {job['state']} ({trigger}{refused})"


def _alert_of(job: dict) -> str:
    labels = job["options"].get("alert", {}).get("labels", {})
    version = labels.get("student_version")
    return labels.get("alertname", "?") + (f" about {version}" if version else "")


def _kl(value: float | None, count: int) -> str:
    return "—" if value is None else f"{value:.3f} ({count})"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"
