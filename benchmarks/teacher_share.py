"""The share of requests a running gateway's routing sends to the teacher (wholly or by handoff), on the demo's
usual tickets and on the drift scenario's launched-product tickets: the figure `routing.handoff.
target_teacher_fraction` is set to.

    KDGATE_STUDENT__MODEL_DIR=distill/demo/artifacts/student-prelaunch KDGATE_ROUTING__HANDOFF__ENABLED=true \\
        KDGATE_STUDENTS__ENABLED=false .venv/bin/kdgate serve --port 8123 &
    .venv/bin/python benchmarks/teacher_share.py --url http://127.0.0.1:8123 --usual 200 --launched 60 --seed 7
"""

from __future__ import annotations

import argparse
from collections import Counter

import httpx

from distill.demo import drift


def share(url: str, tickets) -> tuple[float, Counter]:
    routes = Counter()
    with httpx.Client(timeout=60) as client:
        for ticket in tickets:
            reply = client.post(f"{url}/v1/chat/completions", json={"messages": ticket.messages(), "temperature": 0,
                                                                     "max_tokens": 96})
            reply.raise_for_status()
            routes[reply.headers["x-kdgate-route"]] += 1
    return routes["teacher"] / sum(routes.values()), routes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--usual", type=int, default=200)
    parser.add_argument("--launched", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7, help="of the `val` tickets (the drift demo sends seed 0)")
    args = parser.parse_args()
    for name, stream, count in (("usual", drift.prelaunch("val", args.seed), args.usual),
                                ("launched", drift.launched("val", args.seed + 1), args.launched)):
        value, routes = share(args.url, drift.take(stream, count))
        print(f"{name}: teacher share {value:.3f} ({dict(routes)})")


if __name__ == "__main__":
    main()
