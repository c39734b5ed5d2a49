"""Render helm/kdgate offline with helm_python (Helm's own Go SDK, no helm binary, no cluster) into Kubernetes
objects, and the settings classes' environment variable names the chart's ConfigMaps must use."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kdgate"
PRODUCTION = CHART / "examples" / "production.yaml"
TWO_PAIRS = CHART / "examples" / "two-pairs.yaml"
RELEASE, NAMESPACE = "kdgate", "kdgate"


def render(values: dict | None = None, *, chart_dir: Path = CHART, name: str = RELEASE,
           namespace: str = NAMESPACE) -> list[dict]:
    """Every object the chart renders, ordered by template path (NOTES.txt left out)."""
    import helm_python

    with helm_python.Chart.load(chart_dir) as chart:
        manifests = chart.render(values, name=name, namespace=namespace)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [document for document in yaml.safe_load_all(text) if document]
    return objects


def notes(values: dict | None = None, *, chart_dir: Path = CHART) -> str:
    """What `helm install` prints after installing: the rendered NOTES.txt."""
    import helm_python

    with helm_python.Chart.load(chart_dir) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def production_values() -> dict:
    return yaml.safe_load(PRODUCTION.read_text())


def two_pairs_values() -> dict:
    """examples/two-pairs.yaml over the production example, as `helm install -f production.yaml -f two-pairs.yaml`
    merges them (maps key by key, lists replaced)."""
    def merged(base: dict, over: dict) -> dict:
        return base | {key: merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict)
                       else value for key, value in over.items()}
    return merged(production_values(), yaml.safe_load(TWO_PAIRS.read_text()))


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = [item for item in objects if item["kind"] == kind and item["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    tests = {"In": lambda key, values: labels.get(key) in values,
             "NotIn": lambda key, values: labels.get(key) not in values,
             "Exists": lambda key, values: key in labels,
             "DoesNotExist": lambda key, values: key not in labels}
    return all(tests[rule["operator"]](rule["key"], rule.get("values", []))
               for rule in selector.get("matchExpressions") or [])


def setting_variables() -> set[str]:
    """Every environment variable the gateway and the trainer read as a setting (what docs/configuration.md
    lists): each leaf key, and each section, which takes a JSON object (KDGATE_STUDENT__COST='{...}')."""
    from distill.online.settings import TrainerSettings
    from gateway.settings import GatewaySettings
    from kdgate.config_docs import sections

    names = set()
    for model in (GatewaySettings, TrainerSettings):
        prefix = model.model_config["env_prefix"]
        for section in sections(model):
            keys = [row.key for row in section.rows] + ([section.key] if section.key else [])
            names |= {prefix + key.replace(".", "__").upper() for key in keys if "[]" not in key}
    return names
