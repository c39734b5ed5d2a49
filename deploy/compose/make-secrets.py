"""Make the secrets deploy/compose.yaml mounts, in deploy/compose/secrets/ (its .gitignore keeps them out of git),
and print the keys people use once. Run from the repository root with the project's Python:

    python deploy/compose/make-secrets.py [--out deploy/compose/secrets] [--force]

Each service gets the half it checks: the gateway and the trainer the SHA-256 of a token, its sender the token
(Prometheus the metrics token, Alertmanager the trainer's alert token, the trainer the gateway's admin key). The
PostgreSQL password is in the store URL of both services' settings files. Existing secrets are kept unless
--force: a new password would lock the services out of the database volume made with the old one.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # runtime.credentials makes the keys, in the format the services check

STORE = "postgresql+psycopg://kdgate:{password}@postgres:5432/kdgate"  # the postgres service of compose.yaml
FILES = ("gateway.yaml", "trainer.yaml", "postgres-password", "metrics-token", "trainer-alerts-token",
         "grafana-admin-password")


def make(out: Path) -> dict[str, str]:
    """Write every secret file; return the keys to hand out."""
    from runtime.credentials import new_key

    password = secrets.token_urlsafe(24)
    chat, chat_digest = new_key()
    admin, admin_digest = new_key()
    metrics, metrics_digest = new_key()
    alerts, alerts_digest = new_key()
    trainer_admin, trainer_admin_digest = new_key()
    store = STORE.format(password=password)
    contents = {
        "gateway.yaml": yaml.safe_dump({"shadow": {"store_url": store},
                                        "auth": {"admin_sha256": admin_digest, "metrics_sha256": metrics_digest,
                                                 "keys": [{"name": "app", "sha256": chat_digest}]}}),
        "trainer.yaml": yaml.safe_dump({"store_url": store, "gateway": {"admin_key": admin},
                                        "auth": {"alerts_sha256": alerts_digest,
                                                 "admin_sha256": trainer_admin_digest}}),
        "postgres-password": password, "metrics-token": metrics, "trainer-alerts-token": alerts,
        "grafana-admin-password": secrets.token_urlsafe(18),
    }
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)  # private on the host; the files stay readable to the containers' own users (bind mounts)
    for name in FILES:
        (out / name).write_text(contents[name])  # tokens without a newline: some readers keep it
        (out / name).chmod(0o644)
    return {"chat key (name `app`)": chat, "gateway admin key": admin, "trainer admin key": trainer_admin}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "deploy" / "compose" / "secrets")
    parser.add_argument("--force", action="store_true", help="replace existing secrets")
    args = parser.parse_args()
    present = [name for name in FILES if (args.out / name).exists()]
    if present and not args.force:
        print(f"{args.out} already holds {', '.join(present)}; kept (--force replaces them)", file=sys.stderr)
        return 1
    for label, key in make(args.out).items():
        print(f"{label}: {key}")
    print(f"shown once; Grafana's admin password is in {args.out / 'grafana-admin-password'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
