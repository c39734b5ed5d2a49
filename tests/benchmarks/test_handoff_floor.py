"""benchmarks/handoff_floor.py: the floor that gives a target teacher share is the one under which that share of the
answers' least likely tokens fall, and the script's table agrees with the floor it prints, on the demo's student."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np

from runtime.demo import DEMO_PRELAUNCH_STUDENT_DIR
from tests.benchmarks.test_redistill_datasets import load_script
from tests.conftest import ROOT

bench = load_script("handoff_floor")


def test_the_floor_sends_the_target_share_of_answers_to_the_teacher():
    lowest = np.array([0.95, 0.44, 0.46, 0.99, 0.30, 0.48, 0.97, 0.50, 0.92, 0.45])
    for share in (0.1, 0.3, 0.5, 0.7):
        assert (lowest < bench.floor_for(lowest, share)).mean() == share
    assert (lowest < bench.floor_for(lowest, 0.0)).mean() == 0.0
    assert (lowest < bench.floor_for(lowest, 1.0)).mean() == 1.0


def test_the_script_measures_a_student_and_prints_its_floor():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "handoff_floor.py"), "--student",
                           str(DEMO_PRELAUNCH_STUDENT_DIR), "--usual", "6", "--launched", "3", "--target", "0.5",
                           "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if re.match(r"\| \d", line)]
    assert len(rows) == len(bench.FLOORS)
    shares = [float(row.split("|")[2].strip().removesuffix("%")) for row in rows]
    assert shares == sorted(shares)  # a higher floor hands off at least as many answers
    assert re.search(r"floor for 50% on usual tickets: [0-9.]+ \(usual 50\.0%", done.stdout), done.stdout
