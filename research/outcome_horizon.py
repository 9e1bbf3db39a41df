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

from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.plot import read_curves
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.evaluation.stats import Interval, pair, paired_difference, report_budgets, score_ci
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.sim.tasks import TaskConfig
from metaimprove.storage import atomic_write_csv, meta_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import BUDGET, RESULTS, ROOT, normalized_scores

FAMILY = "halfcheetah_vel"
OUT = RESULTS / "outcome_horizon.csv"
BASELINES = ("operator", "teacher_op_batch")
"""the committed validation methods the evolved operator is paired with"""


def interval(est: Interval) -> str:
    """``value [lo, hi]`` with three decimals."""
    return f"{est.value:.3f} [{est.lo:.3f}, {est.hi:.3f}]"


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
    apply(ApplyConfig(operator_path=str(args.operator), out=str(args.work), task=TaskConfig(FAMILY), split="train",
                      task_start=32, n_tasks=8, seeds=3, budget=BUDGET, methods=["operator"], workers=2))
    _, ckpt = OperatorCheckpoint.load(args.operator)
    batch = float(BatchSchedule.of(ckpt).batch)
    budgets = [b for b in report_budgets(batch, BUDGET) if b <= BUDGET]
    evolved = normalized_scores(read_curves([args.work / "curves.csv"]), budgets)["operator"]
    committed = normalized_scores(read_curves([RESULTS / "improvement_validation.csv"]), budgets)
    rows = []
    for budget in budgets:
        row = {"budget": "B" if budget == BUDGET else f"{budget / batch:g} batches", "env_steps": int(budget),
               "outcome_applications_T": applications, "evolved": interval(score_ci(evolved[budget]))}
        for name in BASELINES:
            row[name] = interval(score_ci(committed[name][budget]))
            row[f"evolved_minus_{name}"] = interval(paired_difference(pair(evolved[budget], committed[name][budget])))
        rows.append(row)
    atomic_write_csv(OUT, list(rows[0]), rows)
    for row in rows:
        print(", ".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
