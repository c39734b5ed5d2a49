"""The embedded demo task: synthetic ticket triage, its tokenizer, and a small teacher and student trained on it.

The built models live in `artifacts/` (committed, so serving starts in seconds); `kdgate demo build` remakes them.
Their paths are declared once, in `runtime.demo`, which the gateway reads without importing this package.
"""

from pathlib import Path

from runtime.demo import ARTIFACTS_DIR, DEMO_STUDENT_DIR, DEMO_TEACHER_DIR  # noqa: F401  (the trainer's names)

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"  # the trainer's YAML configs
# The tool-calling variant (`kdgate demo build --tools`, `distill.demo.tools`): its teacher and student
TOOLS_TEACHER_DIR = ARTIFACTS_DIR / "tools" / "teacher"
TOOLS_STUDENT_DIR = ARTIFACTS_DIR / "tools" / "student"
