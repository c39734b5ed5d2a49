"""What `kdgate serve` prints at start: where it listens, what serves, and, one line each, how requests are routed
and what the shadow worker compares, with the setting that changes it. URLs pass through the redaction rule
(runtime.redact): the banner is printed, logged and served on /admin/status."""

from __future__ import annotations

from gateway.settings import BackendSettings, GatewaySettings, RoutingSettings, ShadowSettings
from gateway.store_default import former_default_note
from router.policy_file import load_policy
from runtime.redact import redact

ROUTING_DOCS = "docs/routing.md"


def banner(settings: GatewaySettings) -> list[str]:
    workers = f"; {settings.workers} workers" if settings.workers > 1 else ""
    return [redact(line) for line in _lines(settings, workers)]


def _lines(settings: GatewaySettings, workers: str) -> list[str]:
    return [f"kdgate gateway on http://{settings.host}:{settings.port}/v1  (model `{settings.served_model}`; "
            f"student: {describe_backend(settings.student)}; teacher: {describe_backend(settings.teacher)}{workers})",
            "routing: " + describe_routing(settings.routing, settings.teacher is not None),
            "shadow: " + describe_shadow(settings.shadow, settings.teacher is not None),
            "cost: " + describe_cost(settings),
            "students: " + describe_students(settings),
            "auth: " + describe_auth(settings),
            *filter(None, [former_default_note(settings.shadow.store_url, settings.student,
                                               settings.serves_demo_models())])]


def describe_students(settings: GatewaySettings) -> str:
    if not settings.students.enabled or not settings.shadow.store_url:
        return "the configured student only (student versions need `students.enabled` and `shadow.store_url`)"
    return (f"the active version in {settings.shadow.store_url} (the configured one on a new store); `kdgate student "
            "list|register|promote|rollback` through /admin/v1/students; docs/student-versions.md")


def describe_backend(backend: BackendSettings | None) -> str:
    if backend is None:
        return "none"
    return f"local {backend.model_dir}" if backend.kind == "local" else f"http {backend.base_url} ({backend.model})"


def describe_routing(routing: RoutingSettings, has_teacher: bool) -> str:
    """One line: the active policy, its threshold, and the settings that change it."""
    policy = routing.policy
    if policy == "student_only":
        first = "student first" if routing.handoff.enabled else "the student serves every request"
    elif policy == "teacher_only":
        first = "the teacher serves every request (routing.policy=teacher_only)"
    elif policy == "random":
        first = f"a random {routing.teacher_fraction:.0%} of requests go to the teacher (routing.policy=random)"
    else:
        first = _describe_confidence(routing)
    if routing.handoff.enabled:
        return (f"{first}; teacher fallback: mid-stream handoff at the first student token below "
                f"p={routing.handoff.min_prob:g}. Change: KDGATE_ROUTING__HANDOFF__MIN_PROB, "
                f"KDGATE_ROUTING__HANDOFF__ENABLED=false; other policies: {ROUTING_DOCS}")
    if not has_teacher:
        return f"{first} (no teacher configured)"
    fallback = ", no teacher fallback" if policy == "student_only" else ""
    return (f"{first}{fallback}. Change: KDGATE_ROUTING__HANDOFF__ENABLED=true (mid-stream handoff), "
            f"KDGATE_ROUTING__POLICY; see {ROUTING_DOCS}")


def _describe_confidence(routing: RoutingSettings) -> str:
    policy_file = load_policy(routing.policy_file)
    held = ("the student's whole answer" if policy_file.prefix_tokens is None
            else f"the student's first {policy_file.prefix_tokens} tokens")
    target = policy_file.calibration.target_teacher_fraction
    online = ""
    if routing.online.enabled:
        online_target = routing.online.target_teacher_fraction
        online = f", recalibrated online toward {target if online_target is None else online_target:.0%}"
    return (f"confidence ({routing.policy_file}): {held} held back, {policy_file.scorer.kind} "
            f"score below {policy_file.threshold:.4g} escalates to the teacher (calibrated to "
            f"{target:.0%} teacher traffic{online})")


def describe_shadow(shadow: ShadowSettings, has_teacher: bool) -> str:
    if not shadow.enabled or not has_teacher:
        return "off" + ("" if has_teacher else " (no teacher to compare with)") + "; KDGATE_SHADOW__ENABLED"
    escalations = " and every escalation" if shadow.record_escalations else ""
    store = shadow.store_url or "no store (metrics only)"
    return (f"the teacher scores {shadow.sample_rate:.0%} of student answers{escalations} off the request path "
            f"→ {store} (shadow.sample_rate, shadow.store_url)")


def describe_cost(settings: GatewaySettings) -> str:
    """Each backend's prices per million tokens, or how to set them."""
    priced = {role: config.cost for role, config in settings.backends().items() if config.cost is not None}
    if not priced:
        return "not priced, no cost metrics (student.cost and teacher.cost; docs/shadow-and-monitoring.md)"
    prices = "; ".join(f"{role} ${prompt:.4g} / ${completion:.4g}" for role, (prompt, completion)
                       in ((role, cost.per_million()) for role, cost in priced.items()))
    return (f"{prices} per million prompt / completion tokens → kdgate_cost_dollars_total, "
            "kdgate_cost_all_teacher_dollars_total")


def describe_auth(settings: GatewaySettings) -> str:
    from gateway.auth import load_credentials

    credentials = load_credentials(settings)
    if not credentials.required:
        where = f"{settings.host}:{settings.port}"
        if settings.auth.mode == "none":
            return (f"OPEN: no API keys, anyone who reaches {where} can call both models (auth.mode: none). "
                    "Keys: `kdgate auth new-key`")
        return (f"open on the loopback address {where}, the admin API included (no API keys configured; add some "
                "with `kdgate auth new-key`)")
    keys = sum(1 for _, principal in credentials.keys if principal.name not in ("admin", "metrics"))
    admin = "an admin credential" if settings.auth.admin_sha256 else "no admin credential (/admin refused)"
    metrics = "a /metrics token" if settings.auth.metrics_sha256 else "/metrics for the admin credential only"
    return f"API keys required ({keys} chat key{'s' if keys != 1 else ''}, {admin}, {metrics})"
