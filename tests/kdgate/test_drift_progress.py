"""`kdgate demo drift` never goes quiet: a status line whenever nothing was said for a while, with what the run is
waiting on (the child process's progress from its log), and the alert's figures rounded."""

from __future__ import annotations

import itertools
import time

from kdgate.drift.progress import Ticker, log_progress
from kdgate.drift.run import replay_cache
from kdgate.drift.watch import Sample, alert_signals, backlog
from runtime.demo import DEMO_TEACHER_DIR


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_status_line_comes_only_after_the_interval_without_news():
    clock, lines = FakeClock(), []
    ticker = Ticker(lines.append, interval_s=20.0, clock=clock)
    ticker.enter("replay cache", lambda: "teacher answers 340/2000, 01:02 left")
    clock.now += 19.0
    assert not ticker.tick() and lines == []
    clock.now += 1.0
    assert ticker.tick()
    assert lines == ["[0:20] replay cache: teacher answers 340/2000, 01:02 left"]
    clock.now += 15.0
    ticker.say("launch")  # news resets the wait
    clock.now += 15.0
    assert not ticker.tick()
    clock.now += 5.0
    assert ticker.tick() and len(lines) == 3


def test_a_failing_detail_still_gives_a_line():
    clock, lines = FakeClock(), []
    ticker = Ticker(lines.append, interval_s=1.0, clock=clock)
    ticker.enter("offline evaluation", lambda: 1 / 0)
    clock.now += 1.0
    assert ticker.tick()
    assert lines == ["[0:01] offline evaluation: (status unavailable: ZeroDivisionError)"]


def test_phase_durations_add_up_to_the_run():
    clock = FakeClock()
    ticker = Ticker(lambda line: None, clock=clock)
    for phase, seconds in (("replay cache", 70.0), ("usual traffic", 90.0), ("job", 300.0), ("report", 40.0)):
        ticker.enter(phase)
        clock.now += seconds
    assert ticker.durations() == {"replay cache": 70.0, "usual traffic": 90.0, "job": 300.0, "report": 40.0}


def test_a_tqdm_log_reads_as_its_count_and_time_left(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("step train\n distill:  41%|####1     | 328/800 [01:10<01:37, 4.76step/s, loss=0.31]\r"
                   " distill:  42%|####2     | 336/800 [01:12<01:35, 4.80step/s, loss=0.30]")
    assert log_progress(log) == "distill 336/800, 01:35 left"
    log.write_text("step gather\ngather: 212 of 450 records; waiting\n")
    assert log_progress(log) == "gather: 212 of 450 records; waiting"
    assert log_progress(tmp_path / "missing.log") == ""


def test_the_alert_figures_are_rounded():
    sample = Sample(145.0, "launched", 0.0013685012238450261, 0.49469964664310956, "firing", "initial", None,
                    drift_kl=0.08528811)
    assert alert_signals(sample) == "drift KL 0.0853, teacher share 49.5 %"
    assert alert_signals(Sample(5.0, "usual", None, None, "inactive", None, None)) == "drift KL —, teacher share —"


def test_the_shadow_backlog_is_said_when_there_is_one():
    """A slow teacher falls behind the shadow jobs, and the drift sample's newest answers wait among them: the status
    line says how many wait, so a drift KL that lags (or reads — after a promotion) is explained."""
    waiting = Sample(3200.0, "after", 0.02, 0.43, "inactive", "rd-1", None, shadow_backlog=87.0)
    assert backlog(waiting) == "87 shadow jobs waiting for the teacher"
    assert backlog(Sample(3200.0, "after", 0.02, 0.43, "inactive", "rd-1", None, shadow_backlog=1.0)) \
        == "1 shadow job waiting for the teacher"
    assert backlog(Sample(5.0, "usual", None, None, "inactive", None, None, shadow_backlog=0.0)) == ""
    assert backlog(Sample(5.0, "usual", None, None, "inactive", None, None)) == ""


def test_making_the_replay_cache_is_not_silent(tmp_path):
    """The real children (prompts, then the teacher answering them) behind a short interval: status lines come
    while they run, naming the teacher's progress, and the log they write is named first."""
    said: list[tuple[float, str]] = []
    with Ticker(lambda line: said.append((time.monotonic(), line)), interval_s=0.5) as ticker:
        cache = replay_cache(tmp_path, DEMO_TEACHER_DIR, 60, 1, ticker)
    assert (cache / "manifest.json").is_file()
    lines = [line for _, line in said]
    assert str(tmp_path / "replay-cache.log") in lines[0], lines[0]
    status = [line for line in lines[1:] if line.startswith("[")]
    assert len(status) >= 3, lines
    assert any("/60" in line for line in status), status  # the teacher's count, from its log
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(said)]
    assert max(gaps) < 0.5 + 1.0, gaps  # the interval, plus the ticker's polling and a busy machine's slack
