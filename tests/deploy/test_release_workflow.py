""".github/workflows/release.yml without GitHub: actionlint finds nothing, the tag check (run here, as the runner runs it)
passes the tag of this version and refuses any other or a chart whose appVersion differs, and the three images are
each built, scanned for critical findings before they are pushed, and pushed with an SBOM and provenance under the
names the chart pulls; then the chart is packaged at that version and pushed to an OCI registry."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests import needs
from tests.conftest import ROOT

WORKFLOW_FILE = ROOT / ".github" / "workflows" / "release.yml"
WORKFLOW = yaml.safe_load(WORKFLOW_FILE.read_text())
JOBS = WORKFLOW["jobs"]
CHART = yaml.safe_load((ROOT / "helm" / "kdgate" / "Chart.yaml").read_text())
VALUES = yaml.safe_load((ROOT / "helm" / "kdgate" / "values.yaml").read_text())
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGES = ["gateway", "trainer", "engine"]
actionlint = shutil.which("actionlint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def steps(job: str, uses: str) -> list[dict]:
    return [step for step in JOBS[job]["steps"] if step.get("uses", "").startswith(uses)]


def test_actionlint_finds_nothing():
    done = subprocess.run([actionlint or needs.missing("actionlint", needs.DEV_EXTRA), "-no-color",
                           str(WORKFLOW_FILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_it_runs_on_version_tags_only():
    trigger = WORKFLOW.get("on", WORKFLOW.get(True))  # YAML 1.1 reads a bare `on` as true
    assert trigger == {"push": {"tags": ["v*"]}}


def check_script() -> str:
    (step,) = [step for step in JOBS["version"]["steps"] if step.get("id") == "check"]
    return step["run"]


def run_check(tag: str, folder: Path) -> tuple[subprocess.CompletedProcess, str]:
    output = folder / "github-output"
    output.write_text("")
    done = subprocess.run(["bash", "-eo", "pipefail", "-c", check_script()], cwd=folder, capture_output=True,
                          text=True, timeout=30, env={"PATH": os.environ["PATH"], "GITHUB_REF_NAME": tag,
                                                      "GITHUB_OUTPUT": str(output)})
    return done, output.read_text()


def repository_copy(tmp_path: Path, app_version: str | None = None) -> Path:
    (tmp_path / "helm" / "kdgate").mkdir(parents=True)
    chart = (ROOT / "helm" / "kdgate" / "Chart.yaml").read_text()
    if app_version:
        chart = re.sub(r"(?m)^appVersion:.*$", f'appVersion: "{app_version}"', chart)
    (tmp_path / "helm" / "kdgate" / "Chart.yaml").write_text(chart)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_chart_and_the_package_have_one_version():
    assert CHART["version"] == CHART["appVersion"] == VERSION


def test_the_tag_check_passes_the_tag_of_this_version_and_hands_it_on(tmp_path):
    done, output = run_check(f"v{VERSION}", repository_copy(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert output == f"version={VERSION}\n"
    assert JOBS["version"]["outputs"]["version"] == "${{ steps.check.outputs.version }}"


def test_the_tag_check_refuses_another_version_naming_each_file(tmp_path):
    done, output = run_check("v9.9.9", repository_copy(tmp_path))
    assert done.returncode == 1 and output == ""
    errors = [line for line in done.stdout.splitlines() if line.startswith("::error::")]
    assert len(errors) == 3  # Chart.yaml's version and appVersion, pyproject.toml's version
    assert all("set it to 9.9.9" in line for line in errors)


def test_the_tag_check_refuses_a_chart_whose_app_version_differs(tmp_path):
    done, _ = run_check(f"v{VERSION}", repository_copy(tmp_path, app_version="0.0.9"))
    assert done.returncode == 1
    (error,) = [line for line in done.stdout.splitlines() if line.startswith("::error::")]
    assert "appVersion" in error and "0.0.9" in error


def test_every_other_job_waits_for_the_tag_check():
    assert JOBS["images"]["needs"] == "version"
    assert set(JOBS["chart"]["needs"]) == {"version", "images"}


def test_the_three_images_are_built_from_their_dockerfiles():
    assert JOBS["images"]["strategy"]["matrix"]["image"] == IMAGES
    for image in IMAGES:
        assert (ROOT / "deploy" / "docker" / f"{image}.Dockerfile").is_file()
    for step in steps("images", "docker/build-push-action@"):
        assert step["with"]["file"] == "deploy/docker/${{ matrix.image }}.Dockerfile"
        assert "VERSION=${{ needs.version.outputs.version }}" in step["with"]["build-args"].splitlines()


def test_the_images_get_the_names_the_chart_pulls():
    prefix = WORKFLOW["env"]["IMAGE_PREFIX"]
    assert prefix.startswith("ghcr.io/")
    for image in ("gateway", "trainer"):
        assert VALUES["images"][image]["repository"] == f"{prefix}-{image}"
    (naming,) = [step for step in JOBS["images"]["steps"] if "GITHUB_ENV" in step.get("run", "")]
    assert naming["run"] == ('echo "IMAGE=$IMAGE_PREFIX-${{ matrix.image }}:${{ needs.version.outputs.version }}" '
                             '>> "$GITHUB_ENV"')


def test_a_critical_finding_fails_before_anything_is_pushed():
    names = [step.get("uses", "").split("@")[0] for step in JOBS["images"]["steps"]]
    (scan,) = [step for step in JOBS["images"]["steps"] if step.get("uses", "").startswith("aquasecurity/trivy-action@")]
    push = [step for step in steps("images", "docker/build-push-action@") if step["with"].get("push")]
    assert len(push) == 1
    assert names.index("aquasecurity/trivy-action") < JOBS["images"]["steps"].index(push[0])
    assert scan["with"]["severity"] == "CRITICAL" and str(scan["with"]["exit-code"]) == "1"
    assert scan["with"]["image-ref"] == "${{ env.IMAGE }}"
    assert re.fullmatch(r"aquasecurity/trivy-action@[0-9a-f]{40}", scan["uses"]), "its tags were rewritten once"


def test_the_push_carries_an_sbom_and_provenance():
    (push,) = [step for step in steps("images", "docker/build-push-action@") if step["with"].get("push")]
    assert push["with"]["sbom"] is True and push["with"]["provenance"] is True
    assert push["with"]["tags"] == "${{ env.IMAGE }}"
    assert JOBS["images"]["permissions"]["packages"] == "write"
    assert steps("images", "docker/login-action@")[0]["with"]["registry"] == "ghcr.io"


def test_the_chart_is_packaged_at_the_tag_version_and_pushed_to_an_oci_registry():
    script = "\n".join(step.get("run", "") for step in JOBS["chart"]["steps"])
    assert 'helm package helm/kdgate --version "$VERSION" --app-version "$VERSION"' in script
    assert 'helm push "dist/kdgate-$VERSION.tgz" "$CHART_REPOSITORY"' in script
    assert WORKFLOW["env"]["CHART_REPOSITORY"].startswith("oci://ghcr.io/")
    assert JOBS["chart"]["env"]["VERSION"] == "${{ needs.version.outputs.version }}"
    assert (ROOT / "helm" / "kdgate" / "Chart.yaml").is_file() and CHART["name"] == "kdgate"


@pytest.mark.parametrize("job", ["images", "chart"])
def test_secrets_reach_scripts_through_the_environment_only(job):
    for step in JOBS[job]["steps"]:
        assert "secrets." not in step.get("run", ""), f"{step.get('name')}: pass secrets through env:"
