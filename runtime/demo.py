"""Where the embedded demo's models are: the gateway serves them by default, the trainer builds and reads them.

Only paths, so that the gateway's defaults need neither torch nor the trainer's package. The models themselves are
built by `kdgate demo build` (`distill.demo`) and committed under `distill/demo/artifacts/`.
"""

from pathlib import Path

ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "distill" / "demo" / "artifacts"
DEMO_TEACHER_DIR = ARTIFACTS_DIR / "teacher"
DEMO_STUDENT_DIR = ARTIFACTS_DIR / "student"
# the student distilled without the drift scenario's launched products (`kdgate demo drift` serves it first)
DEMO_PRELAUNCH_STUDENT_DIR = ARTIFACTS_DIR / "student-prelaunch"
DEMO_TOOLS_DIR = ARTIFACTS_DIR / "tools"  # the pair trained to call the demo's tool (`kdgate demo build --tools`)
DEMO_ROUTER_POLICY = ARTIFACTS_DIR / "router-policy.json"  # the routing policy calibrated for the demo student
