"""A line at least every `interval_s` for the whole of `kdgate demo drift`: whatever the run says and, whenever it
has said nothing for that long, a status line (elapsed time, phase, what it is waiting on), so that a long step
(the teacher answering the replay prompts, the job training, the offline evaluation) never looks hung.

The phases' wall times are kept too, for the closing summary and drift.json.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

# tqdm's line: "desc:  42%|████▏     | 336/800 [01:10<01:37, 4.76it/s, loss=…]" (desc and the bar optional)
TQDM = re.compile(r"(?:(?P<desc>[^|\r\n]*?):\s*)?(?:\d+%\|[^|]*\|\s*)?(?P<done>\d+)/(?P<total>\d+)\s*"
                  r"\[[\d:]+<(?P<left>[\d:?]+)")


class Ticker:
    """Says lines through `say`, and a status line whenever `interval_s` passed without one (from a thread of
    its own, so that it speaks while the caller blocks on a child process or a model)."""

    def __init__(self, say: Callable[[str], None], interval_s: float = 20.0,
                 clock: Callable[[], float] = time.monotonic):
        self._say, self.interval_s, self._clock = say, interval_s, clock
        self.started = self._last = clock()
        self.phase, self._detail = "starting", _nothing
        self.phases: list[tuple[str, float]] = []  # (phase, seconds since the start when it began)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def say(self, line: str) -> None:
        with self._lock:
            self._say(line)
            self._last = self._clock()

    def enter(self, phase: str, detail: Callable[[], str] | None = None) -> None:
        """A new phase; `detail()` is asked what it waits on at each status line (keep it quick: no network)."""
        self.phase, self._detail = phase, detail or _nothing
        self.phases.append((phase, self._clock() - self.started))

    def update(self, detail: Callable[[], str]) -> None:
        """What the current phase waits on now."""
        self._detail = detail

    def status(self) -> str:
        try:
            detail = self._detail()
        except Exception as error:  # a status line must never stop the run
            detail = f"(status unavailable: {type(error).__name__})"
        return f"[{clock_time(self._clock() - self.started)}] {self.phase}" + (f": {detail}" if detail else "")

    def tick(self) -> bool:
        """Say the status line if nothing was said for `interval_s`; True when it did."""
        if self._clock() - self._last < self.interval_s:
            return False
        self.say(self.status())
        return True

    def durations(self) -> dict[str, float]:
        """Seconds spent in each phase, in order (a phase entered twice adds up)."""
        ends = [start for _, start in self.phases[1:]] + [self._clock() - self.started]
        spent: dict[str, float] = {}
        for (phase, start), end in zip(self.phases, ends, strict=True):
            spent[phase] = spent.get(phase, 0.0) + end - start
        return spent

    def __enter__(self) -> Ticker:
        self._thread = threading.Thread(target=self._run, name="drift-ticker", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.interval_s / 4)):
            self.tick()


def _nothing() -> str:
    return ""


def clock_time(seconds: float) -> str:
    """12:05 for 725 s."""
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def log_progress(path: Path, chars: int = 4000) -> str:
    """What a child process's log says it is doing now: a tqdm bar as `desc 336/800, 01:37 left`, else its
    last line (shortened); "" when the log is missing or empty."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - chars))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in re.split(r"[\r\n]+", tail) if line.strip()]
    if not lines:
        return ""
    found = TQDM.search(lines[-1])
    if found is None:
        return lines[-1] if len(lines[-1]) <= 100 else lines[-1][:97] + "..."
    desc = (found["desc"] or "").strip()
    return f"{desc + ' ' if desc else ''}{found['done']}/{found['total']}, {found['left']} left"
