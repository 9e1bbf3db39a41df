"""Does outcome training over T applications make the operator better at the budget B, or only over T?

``metaimprove outcome`` evolves the shipped operator's weights on the return it reaches after T applications
(default 4) relative to its teacher on the operator's batch schedule. This study applies an evolved operator on
the 8 validation tasks (``train`` 32-39) × 3 seeds at B = 61440 env steps (36 applications, warm-up included, far
past T) and scores it per task, normalized, at 1, 2, 4 and 8 batches and at B, paired by task and seed with the
shipped imitation-trained operator and with ``teacher_op_batch`` (both from ``results/improvement_validation.csv``,
the same fresh starts and seeds). Writes ``results/outcome_horizon.csv``: one row per budget. Nothing is measured
on test tasks.

The evolved operator is made by (100 generations, about an hour on 2 cores)::

    metaimprove outcome operator_path=halfcheetah_vel out=runs/outcome_v1

    python research/outcome_horizon.py [--operator runs/outcome_v1/operator.safetensors] [--work runs/outcome_horizon]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metaimprove.storage import atomic_write_csv, meta_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import RESULTS, ROOT, against_validation

FAMILY = "halfcheetah_vel"
OUT = RESULTS / "outcome_horizon.csv"
BASELINES = ("operator", "teacher_op_batch")
"""the committed validation methods the evolved operator is paired with"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operator", type=Path, default=ROOT / "runs" / "outcome_v1" / "operator.safetensors")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "outcome_horizon")
    args = parser.parse_args()
    if not args.operator.is_file():
        raise SystemExit(f"{args.operator} is missing: make it with `metaimprove outcome operator_path={FAMILY} "
                         f"out={args.operator.parent}`")
    state = meta_path(args.operator.with_name("es.safetensors"))  # the outcome run's settings, beside its operator
    applications = json.loads(state.read_text())["meta"]["settings"]["applications"] if state.exists() else ""
    rows = [{"outcome_applications_T": applications, **row}
            for row in against_validation(args.operator, args.work, "evolved", BASELINES)]
    atomic_write_csv(OUT, list(rows[0]), rows)
    for row in rows:
        print(", ".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
