"""Each pair's settings file for `kdgate serve --config A.yaml --config B.yaml`, written by the chart's gateway pod's
init container when the release serves several pairs: the chart's file (a ConfigMap, which holds no secret) with the
secret-bearing keys filled in from this container's environment, which Kubernetes reads from each pair's Secrets.
The gateway reads its own environment for every pair alike, so a pair's store URL and vLLM key can only be its own
in its own file.

    python3 pair_settings.py SOURCE_DIR TARGET_DIR

An environment variable FILE.KEY.SUBKEY (billing.shadow.store_url) sets KEY.SUBKEY in TARGET_DIR/FILE.yaml, which is
SOURCE_DIR/FILE.yaml otherwise unchanged.
"""

import os
import sys
from pathlib import Path

import yaml


def settings_files(source: Path, environment: dict[str, str]) -> dict[str, dict]:
    """Every SOURCE_DIR/*.yaml by its stem, each with the values its FILE.KEY variables give."""
    files = {path.stem: yaml.safe_load(path.read_text()) or {} for path in sorted(source.glob("*.yaml"))}
    for name, value in environment.items():
        stem, _, key = name.partition(".")
        if stem not in files or not key:
            continue
        *parents, leaf = key.split(".")
        section = files[stem]
        for parent in parents:
            section = section.setdefault(parent, {})
        section[leaf] = value
    return files


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, target = Path(argv[1]), Path(argv[2])
    files = settings_files(source, dict(os.environ))
    if not files:
        print(f"no settings files (*.yaml) in {source}", file=sys.stderr)
        return 1
    for stem, settings in files.items():
        path = target / f"{stem}.yaml"
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
        path.chmod(0o600)  # a store URL carries its password
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
