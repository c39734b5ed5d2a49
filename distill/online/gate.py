"""The gate: a candidate is admitted only if it is better where it was trained to be and no worse anywhere else.

Every check compares the candidate with the active student on the same examples (the Harbor Analytics checklist:
task accuracy by slice, schema validity, calibration, and the distillation target itself):

| check | passes when |
|---|---|
| held-out KL to the teacher | falls by at least `min_kl_drop` of the active student's |
| held-out token agreement with the teacher | falls by at most `agreement_tolerance` |
| golden-set exact match, every slice | falls by at most `golden_tolerance` on each |
| golden-set valid answers | fall by at most `valid_tolerance` |
| golden-set calibration (ECE) | rises by at most `ece_tolerance` |
"""

from __future__ import annotations

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
        checks.append(Check(f"golden_{name}", value, got, got >= floor - 1e-12, f"≥ {floor:.4f}"))
    floor = a["valid"] - settings.valid_tolerance
    checks.append(Check("golden_valid", a["valid"], c["valid"], c["valid"] >= floor - 1e-12, f"≥ {floor:.4f}"))
    ceiling = a["ece"] + settings.ece_tolerance
    checks.append(Check("golden_ece", a["ece"], c["ece"], c["ece"] <= ceiling, f"≤ {ceiling:.4f}"))
    failed = [check.name for check in checks if not check.passed]
    return {"decision": "rejected" if failed else "admitted", "failed": failed,
            "checks": [asdict(check) for check in checks]}
