""".ci/run on a machine where one Debian service cannot be installed: it fails before any test runs, naming the
binary and its package (it used to go on, and the tests that needed the service skipped)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import ROOT

HIDDEN = "redis-server"
APT_WITHOUT_THE_PACKAGE = f"""#!/bin/sh
[ "$1" = update ] && exit 0
echo "E: Unable to locate package {HIDDEN}" >&2
exit 100
"""


def path_without(tmp_path: Path, hidden: str) -> Path:
    """A PATH folder linking every program of this machine except `hidden`, with an apt-get that cannot find it."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for directory in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for entry in sorted(Path(directory).iterdir()) if Path(directory).is_dir() else []:
            link = folder / entry.name
            if entry.name in (hidden, "apt-get", "sudo") or link.exists() or not os.access(entry, os.X_OK):
                continue
            link.symlink_to(entry)
    (folder / "apt-get").write_text(APT_WITHOUT_THE_PACKAGE)
    (folder / "apt-get").chmod(0o755)
    return folder


def test_ci_fails_naming_a_service_that_cannot_be_installed(tmp_path):
    folder = path_without(tmp_path, HIDDEN)
    done = subprocess.run(["bash", ".ci/run", "--check-services"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PATH": str(folder), "HOME": str(tmp_path), "CI": "true"})
    assert done.returncode == 1, done.stdout + done.stderr
    (installing,) = [line for line in done.stdout.splitlines() if line.startswith("ci: installing ")]
    assert HIDDEN in installing.split()  # it tried
    assert f"ci: {HIDDEN} is missing (Debian package {HIDDEN}): its tests cannot run" in done.stderr
    assert "every service the tests need is installed" not in done.stdout
