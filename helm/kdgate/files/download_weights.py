"""Download a model server's weights once into the chart's claim (the `weights` Job of templates/models/weights.yaml).

MODEL (a Hugging Face id) and REVISION ("" = main) go to TARGET (<mountPath>/<MODEL> on the claim) with
huggingface_hub, which the vLLM image carries; HF_TOKEN for gated models. A marker file written last says the
download is whole: the model server's init container waits for it, and a second run (the Job retried, a pod
rescheduled) finds it and downloads nothing. Standard library and huggingface_hub only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> int:
    model, revision, target = os.environ["MODEL"], os.environ.get("REVISION") or "main", Path(os.environ["TARGET"])
    marker, wanted = target / ".kdgate-complete", f"{model}@{revision}"
    if marker.is_file() and marker.read_text() == wanted:
        print(f"{target}: {wanted} is already here; nothing to download")
        return 0
    from huggingface_hub import HfApi, snapshot_download

    print(f"downloading {wanted} into {target} ...", flush=True)
    try:  # the file list first: snapshot_download returns an existing local_dir as it is when the hub is unreachable
        files = HfApi().list_repo_files(model, revision=revision)
        snapshot_download(repo_id=model, revision=revision, local_dir=target)
    except Exception as error:  # the hub's errors: no marker, so the servers keep waiting and the Job retries
        print(f"the download of {wanted} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    missing = [name for name in files if not (target / name).is_file()]
    if missing:
        print(f"the download of {wanted} is incomplete: {', '.join(missing[:5])} missing", file=sys.stderr)
        return 1
    marker.write_text(wanted)
    print(f"{target}: {wanted} downloaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
