"""The handoff floor (`routing.handoff.min_prob`) that gives a student a target teacher share on the drift
scenario's usual tickets, and the share it then gives on launched-product tickets: measured offline from the
student's own greedy answers, without a gateway or a teacher (the teacher's continuation does not change where
the student's answer is handed off).

With handoff, the gateway hands the rest of an answer to the teacher at the first student token less likely than
the floor, so an answer goes to the teacher exactly when its least likely token is under the floor: the share at a
floor is the share of answers whose lowest token probability is under it.

    .venv/bin/python benchmarks/handoff_floor.py --student runs/pair/student-prelaunch --target 0.35
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from distill.demo import drift

FLOORS = (0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9)


def lowest_probabilities(student: Path, tickets, max_new_tokens: int = 96) -> np.ndarray:
    """Each ticket's greedy answer's least likely token's probability (as the engine samples at temperature 0)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    model = AutoModelForCausalLM.from_pretrained(student).eval()
    lowest = []
    for ticket in tickets:
        prompt = tokenizer.apply_chat_template(ticket.messages(), add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.no_grad():
            done = model.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True)
        lowest.append(min(torch.softmax(step[0].float(), -1).max().item() for step in done.scores))
    return np.array(lowest)


def floor_for(lowest: np.ndarray, share: float) -> float:
    """The floor under which `share` of the answers' lowest probabilities fall (midway between two answers')."""
    ordered = np.sort(lowest)
    index = int(round(share * len(ordered)))
    if index <= 0:
        return float(ordered[0])
    if index >= len(ordered):
        return float(np.nextafter(ordered[-1], 1.0))
    return float((ordered[index - 1] + ordered[index]) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", type=Path, required=True, help="the student's model folder")
    parser.add_argument("--target", type=float, default=0.35, help="the teacher share wanted on usual tickets")
    parser.add_argument("--usual", type=int, default=80)
    parser.add_argument("--launched", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="of the `val` tickets (the drift demo sends seed 0)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    usual = lowest_probabilities(args.student, drift.take(drift.prelaunch("val", args.seed), args.usual))
    launched = lowest_probabilities(args.student, drift.take(drift.launched("val", args.seed + 1), args.launched))
    print(f"{args.student}: {args.usual} usual and {args.launched} launched-product tickets\n")
    print("| floor (min_prob) | teacher share, usual | teacher share, launched |")
    print("|---|---|---|")
    for floor in FLOORS:
        print(f"| {floor} | {(usual < floor).mean():.1%} | {(launched < floor).mean():.1%} |")
    floor = floor_for(usual, args.target)
    print(f"\nfloor for {args.target:.0%} on usual tickets: {floor:.3f} (usual {(usual < floor).mean():.1%}, "
          f"launched {(launched < floor).mean():.1%})")


if __name__ == "__main__":
    main()
