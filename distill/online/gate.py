"""The gate: a candidate is admitted only if it is better where it was trained to be and no worse anywhere else.

Every check compares the candidate with the active student on the same examples (the Harbor Analytics checklist:
task accuracy by slice, schema validity, calibration, and the distillation target itself):

| check | passes when |
|---|---|
| held-out KL to the teacher | falls by at least `min_kl_drop` of the active student's |
| held-out token agreement with the teacher | falls by at most `agreement_tolerance` |
| golden-set exact match, every slice | falls by at most `golden_tolerance` on each, or by more but not significantly: a paired (McNemar) exact test on the tickets the two answer differently, one-sided at `significance` |
| golden-set valid answers | fall by at most `valid_tolerance` |
| golden-set calibration (ECE) | rises by at most `ece_tolerance` |
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from distill.online.settings import GateSettings


@dataclass(frozen=True)
class Check:
    name: str
    active: float
    candidate: float
    passed: bool
    rule: str


def judge(active: dict, candidate: dict, settings: GateSettings) -> dict:
    """{"decision": "admitted" | "rejected", "checks": [...], "failed": [names]} from two `evaluate.figures`."""
    checks = []
    a, c = active["heldout"], candidate["heldout"]
    if a.get("examples"):
        needed = a["kl_to_teacher"] * (1 - settings.min_kl_drop)
        checks.append(Check("heldout_kl", a["kl_to_teacher"], c["kl_to_teacher"], c["kl_to_teacher"] <= needed,
                            f"≤ {needed:.4f} (a {settings.min_kl_drop:.0%} drop)"))
        floor = a["token_agreement"] - settings.agreement_tolerance
        checks.append(Check("heldout_token_agreement", a["token_agreement"], c["token_agreement"],
                            c["token_agreement"] >= floor, f"≥ {floor:.4f}"))
    else:  # nothing shows the candidate is better: never admitted on the golden set alone
        checks.append(Check("heldout_examples", 0.0, 0.0, False, "≥ 1 held-out example"))
    a, c = active["golden"], candidate["golden"]
    for name, value in a["by_slice"].items():
        floor = value - settings.golden_tolerance
        got = c["by_slice"].get(name, 0.0)
        worse, better = discordant(a, c, name)
        p = regression_p(worse, better)
        passed = got >= floor - 1e-12 or p >= settings.significance
        checks.append(Check(f"golden_{name}", value, got, passed,
                            f"≥ {floor:.4f}, or a drop with p ≥ {settings.significance:g} ({worse} tickets lost, "
                            f"{better} gained: p = {p:.3f})"))
    floor = a["valid"] - settings.valid_tolerance
    checks.append(Check("golden_valid", a["valid"], c["valid"], c["valid"] >= floor - 1e-12, f"≥ {floor:.4f}"))
    ceiling = a["ece"] + settings.ece_tolerance
    checks.append(Check("golden_ece", a["ece"], c["ece"], c["ece"] <= ceiling, f"≤ {ceiling:.4f}"))
    failed = [check.name for check in checks if not check.passed]
    return {"decision": "rejected" if failed else "admitted", "failed": failed,
            "checks": [asdict(check) for check in checks]}


def discordant(active: dict, candidate: dict, name: str) -> tuple[int, int]:
    """On one slice's tickets: how many the active student got right and the candidate wrong, and the reverse."""
    pairs = [(a, c) for a, c, slice_name in zip(active["hits"], candidate["hits"], active["slices"], strict=True)
             if slice_name == name]
    return sum(a and not c for a, c in pairs), sum(c and not a for a, c in pairs)


def regression_p(worse: int, better: int) -> float:
    """One-sided exact McNemar: the chance of losing at least `worse` of the `worse + better` tickets the two
    models answer differently, were neither better (a fair coin per ticket)."""
    total = worse + better
    if total == 0:
        return 1.0
    return sum(math.comb(total, k) for k in range(worse, total + 1)) / 2 ** total
