"""The study's summary (per arm: every seed's score, the mean with its interval, the paired difference to hard-label
SFT, the gap recovered) and its Markdown table."""

from __future__ import annotations

from dataclasses import asdict
from statistics import fmean

from distill.study.arms import ARMS
from distill.study.closeness import TICKETS
from distill.study.settings import StudySettings
from distill.study.stats import Interval, gap_recovered, interval, paired_p

BASELINE = "sft-gold"


def summarise(settings: StudySettings, scores: dict, teachers: dict, base: float,
              soft_labels: dict | None = None, soft_from: dict | None = None) -> dict:
    """`scores`: each arm's score by name (ARM-sSEED), with its `teacher` key and `closeness`; `teachers`: each
    seed's teacher's figures by key (tabulate.py `_teacher_figures`); `soft_labels`: soft_labels.soft_label_mass of
    one teacher's cache (None: left out of the table), `soft_from` whose: `{"key": KEY12}`."""
    seed_teacher = [teachers[scores[f"{BASELINE}-s{seed}"]["teacher"]]["score"] for seed in settings.seeds]
    teacher = [scored["exact_match"] for scored in seed_teacher]
    baseline = [scores[f"{BASELINE}-s{seed}"]["exact_match"] for seed in settings.seeds]
    arms = {}
    for arm in settings.arms:
        values = [scores[f"{arm}-s{seed}"]["exact_match"] for seed in settings.seeds]
        minutes = [scores[f"{arm}-s{seed}"].get("train_minutes") for seed in settings.seeds]
        differences = [value - base for value, base in zip(values, baseline, strict=True)]
        gap = gap_recovered(values, baseline, teacher)
        close = [scores[f"{arm}-s{seed}"]["closeness"] for seed in settings.seeds]
        arms[arm] = {"description": ARMS[arm].description, "exact_match": values,
                     "mean": asdict(interval(values)), "difference": asdict(interval(differences)),
                     "p": paired_p(values, baseline) if arm != BASELINE else None,
                     "gap_recovered": asdict(gap) if gap else None,
                     "train_minutes": [minute for minute in minutes if minute is not None],
                     "kl_to_teacher": asdict(interval([figures["kl_to_teacher"] for figures in close])),
                     "token_agreement": asdict(interval([figures["token_agreement"] for figures in close])),
                     "fields": {field: fmean(scores[f"{arm}-s{seed}"][f"{field}_accuracy"]
                                             for seed in settings.seeds)
                                for field in _fields(seed_teacher[0])}}
    best = max((arm for arm in arms if arm != BASELINE), key=lambda arm: arms[arm]["mean"]["mean"], default=None)
    return {"settings": settings.model_dump(mode="json"), "teacher": fmean(teacher), "teacher_per_seed": teacher,
            "teachers": _teachers(settings, scores, teachers), "base": base,
            "teacher_fields": {field: fmean(scored[f"{field}_accuracy"] for scored in seed_teacher)
                               for field in _fields(seed_teacher[0])},
            "soft_labels": soft_labels, "soft_labels_from": soft_from, "seeds": settings.seeds, "arms": arms,
            "best": best}


def _teachers(settings: StudySettings, scores: dict, teachers: dict) -> list[dict]:
    """Each teacher the seeds learnt from: its score, the seeds, where it was made, its pruned student's start."""
    listed = []
    for key, figures in teachers.items():
        seeds = [seed for seed in settings.seeds if scores[f"{BASELINE}-s{seed}"]["teacher"] == key]
        made = figures["score"].get("made_on", {})
        listed.append({"key": key[:12], "exact_match": figures["score"]["exact_match"], "seeds": seeds,
                       "cpu": made.get("cpu"), "avx512": made.get("avx512"), "bf16": figures["score"].get("bf16"),
                       "student_init": figures["student_init"],
                       "student_init_closeness": figures["student_init_closeness"]})
    return sorted(listed, key=lambda teacher: teacher["seeds"])


def _fields(score: dict) -> list[str]:
    """The answer fields a score has an accuracy for (`queue_accuracy` → queue)."""
    return [key.removesuffix("_accuracy") for key in score if key.endswith("_accuracy")]


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}"


def _kl(nats: float) -> str:
    return f"{nats:.3f}"


def _span(raw: dict | None, unit: str = " %", signed: bool = False) -> str:
    """`mean [low, high]` in percent (or points); "n/a" for none."""
    if raw is None:
        return "n/a"
    span = Interval(**raw)
    number = "{:+.1f}" if signed else "{:.1f}"
    text = number.format(span.mean * 100)
    if span.low is not None:
        text += f" [{number.format(span.low * 100)}, {number.format(span.high * 100)}]"
    return text + unit


def table(summary: dict) -> str:
    settings = summary["settings"]
    lines = [
        f"{_teachers_line(summary['teachers'], settings['test_tickets'])} Each arm: {settings['train']['steps']} "
        f"steps of {settings['train']['batch_size']} from the same pruned student ({settings['student']['keep']} "
        "blocks), "
        f"seeds {', '.join(map(str, summary['seeds']))}; means with 95 % t intervals over seeds; differences and "
        f"the paired t-test against hard-label SFT pair runs by seed; gap recovered = (arm − SFT) / (teacher − SFT), "
        "per seed, against that seed's teacher. KL to the teacher (nats/token) and token agreement: teacher-forced "
        f"along the teacher's greedy answers to the first {min(TICKETS, settings['test_tickets'])} of those tickets "
        f"(the base checkpoint before fine-tuning: {_percent(summary['base'])} % exact match).",
        "",
        "| arm | trained with | exact match per seed | mean [95 % CI] | vs hard-label SFT [95 % CI] | p | "
        "gap recovered [95 % CI] | KL to teacher | token agreement | min/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, arm in summary["arms"].items():
        seeds = " / ".join(_percent(value) for value in arm["exact_match"])
        minutes = arm["train_minutes"]
        per_run = f"{sum(minutes) / len(minutes):.1f}" if minutes else ""
        baseline = name == BASELINE
        label = f"**{name}**" if name == summary["best"] else name
        difference = "" if baseline else _span(arm["difference"], " pts", signed=True)
        gap = "" if baseline else _span(arm["gap_recovered"], signed=True)
        p_value = "" if arm["p"] is None else f"{arm['p']:.3f}"
        lines.append(f"| {label} | {arm['description']} | {seeds} | {_span(arm['mean'])} | {difference} | "
                     f"{p_value} | {gap} | {_kl(arm['kl_to_teacher']['mean'])} | {_span(arm['token_agreement'])} | "
                     f"{per_run} |")
    return "\n".join(lines + _by_field(summary) + _soft_labels(summary)) + "\n"


def _teachers_line(teachers: list[dict], tickets: int) -> str:
    """Each seed's teacher (one per machine that trained seeds: a seed's arms all learn from one), where it was
    made, and the pruned student it gave before training."""
    parts = []
    for teacher in teachers:
        seeds = ", ".join(map(str, teacher["seeds"]))
        where = f"{teacher['cpu'] or 'CPU'} {'with' if teacher['avx512'] else 'without'} AVX512"
        close = teacher["student_init_closeness"] or {}
        init = (f"its pruned student before training {_percent(teacher['student_init'])} %"
                + (f", KL {_kl(close['kl_to_teacher'])}, agreement {_percent(close['token_agreement'])} %"
                   if close else ""))
        parts.append(f"{_percent(teacher['exact_match'])} % for seed{'s' if len(teacher['seeds']) > 1 else ''} "
                     f"{seeds} ({where}, {'bf16' if teacher['bf16'] else 'fp32'}; {init})")
    label = "Teacher" if len(parts) == 1 else "Teachers (one per machine; a seed's arms all learn from one)"
    return f"{label}: {'; '.join(parts)}; exact match on {tickets} held-out tickets."


def _by_field(summary: dict) -> list[str]:
    """Each answer field's accuracy, mean over seeds: which part of an answer each arm gets wrong."""
    fields = list(summary.get("teacher_fields", {}))
    if not fields:
        return []
    lines = ["", "Field by field (accuracy on the held-out tickets, mean over seeds; an answer is an exact match only "
             "when every field is right):", "", "| model | " + " | ".join(fields) + " | exact match |",
             "|---|" + "---|" * (len(fields) + 1),
             "| teacher | " + " | ".join(f"{_percent(summary['teacher_fields'][field])} %" for field in fields)
             + f" | {_percent(summary['teacher'])} % |"]
    for name, arm in summary["arms"].items():
        lines.append(f"| {name} | " + " | ".join(f"{_percent(arm['fields'][field])} %" for field in fields)
                     + f" | {_percent(arm['mean']['mean'])} % |")
    return lines


def _soft_labels(summary: dict) -> list[str]:
    """Where the teacher's cached top-k puts mass off the token it wrote: the only tokens where KD asks the student
    for more than SFT on the teacher's answers does."""
    soft, source = summary.get("soft_labels"), summary.get("soft_labels_from") or {}
    if not soft:
        return []
    which = f"teacher {source.get('key', '')}".strip()
    seeds = next((teacher["seeds"] for teacher in summary["teachers"] if teacher["key"] == source.get("key")), [])
    if seeds:
        which += f", which taught seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    else:
        which += ", made from the same settings on another machine than the seeds above"
    lines = ["", f"What the teacher's soft labels carry beyond its answers (the cached top-k of {which}, along its "
             "answers to the training tickets, per field of the answer's JSON): KD and SFT on the teacher's answers "
             "ask the same of a token where the teacher's top token holds all the mass.", "",
             "| field | tokens | mean mass off the top token | share of all that mass | tokens with p(top) < 0.9 |",
             "|---|---|---|---|---|"]
    for field, figures in soft.items():
        lines.append(f"| {field} | {figures['tokens']} | {figures['mean_off_top']:.4f} | "
                     f"{_percent(figures['share_of_off_top'])} % | {_percent(figures['uncertain'])} % |")
    return lines
