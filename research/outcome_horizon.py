"""Does outcome training over T applications make the operator better at the budget B, or only over T?

``metaimprove outcome`` evolves the shipped operator's weights on the return it reaches after T applications
(default 4) relative to its teacher on the operator's batch schedule. This study applies an evolved operator on
the 8 validation tasks (``train`` 32-39) × 3 seeds at B = 61440 env steps (36 applications, warm-up included, far
past T) and scores it per task, normalized, at 1, 2, 4 and 8 batches and at B, paired by task and seed with the
shipped imitation-trained operator and with ``teacher_op_batch`` (both from ``results/improvement_validation.csv``,
the same fresh starts and seeds). Writes ``results/outcome_horizon.csv``: one row per budget. An operator evolved
from the learned start (``outcome start=learned``) is applied from it instead (``operator_learned_start``) and paired
with the shipped operator from the same start, into ``results/outcome_horizon_learned.csv``. Each row records the
run's T, its generations so far and whether it had ended. Nothing is measured on test tasks.

The evolved operators are made by (100 generations: about an hour on 2 cores at T = 4, ten at T = 36)::

    metaimprove outcome operator_path=halfcheetah_vel out=runs/outcome_v1
    metaimprove outcome operator_path=halfcheetah_vel start=learned applications=36 out=runs/outcome_learned

    python research/outcome_horizon.py [--operator runs/outcome_v1/operator.safetensors] [--work runs/outcome_horizon]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.storage import atomic_write_csv, load_tensors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import RESULTS, ROOT, against_validation

FAMILY = "halfcheetah_vel"
OUT = RESULTS / "outcome_horizon.csv"
BASELINES = ("operator", "teacher_op_batch")
"""the committed validation methods the evolved operator is paired with"""
LEARNED = "operator_learned_start"
"""the method an operator evolved from the learned start (``outcome start=learned``) is applied as, and paired with"""
LEARNED_START = RESULTS / "operators" / f"{FAMILY}.start.safetensors"
OUT_LEARNED = RESULTS / "outcome_horizon_learned.csv"


def moved(evolved: Path, source: str) -> float:
    """How far the outcome run took the weights: ‖w_evolved − w_source‖ / ‖w_source‖."""
    vectors = [torch.nn.utils.parameters_to_vector(OperatorCheckpoint.load(path)[0].parameters()).detach()
               for path in (evolved, source)]
    return float((vectors[0] - vectors[1]).norm() / vectors[1].norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operator", type=Path, default=ROOT / "runs" / "outcome_v1" / "operator.safetensors")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "outcome_horizon")
    args = parser.parse_args()
    if not args.operator.is_file():
        raise SystemExit(f"{args.operator} is missing: make it with `metaimprove outcome operator_path={FAMILY} "
                         f"out={args.operator.parent}`")
    summary = load_tensors(args.operator)[1]["summary"]  # the outcome run's settings and progress
    settings = summary["settings"]
    learned = settings.get("start") == "learned"
    method, baselines, out = (LEARNED, (LEARNED,), OUT_LEARNED) if learned else ("operator", BASELINES, OUT)
    start = LEARNED_START if learned else None
    rows = [{"outcome_applications_T": settings["applications"], "generations": summary["generations"],
             "complete": summary["complete"], "weights_moved": f"{moved(args.operator, summary['source']):.4f}", **row}
            for row in against_validation(args.operator, args.work, "evolved", baselines, method, start)]
    atomic_write_csv(out, list(rows[0]), rows)
    for row in rows:
        print(", ".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
