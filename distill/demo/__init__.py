"""The embedded demo task: synthetic ticket triage, its tokenizer, and a small teacher and student trained on it.

The built models live in `artifacts/` (committed, so serving starts in seconds); `kdgate demo build` remakes them.
This module stays import-light: the gateway reads the two paths below without pulling in torch.
"""

from pathlib import Path

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
DEMO_TEACHER_DIR = ARTIFACTS_DIR / "teacher"
DEMO_STUDENT_DIR = ARTIFACTS_DIR / "student"
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"  # the trainer's YAML configs
