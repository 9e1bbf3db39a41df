"""Do more training tasks make the operator better? Its normalized validation score for 16, 64 and 256 tasks.

Evaluation v2's question of "more diverse data generalizes better" (issue 25): one operator per task count N, each
fitted with the shipped operator's settings (``features.n_envs=32``, ``ask_k=1``, the warm-up ``[[8,4096]]``, every
other setting the default) to the first N tasks of the shipped teacher's collections, applied on the validation
tasks (``train`` 32-39 × 3 seeds, fresh starts, B = 61440 env steps) and scored per task, normalized. Per N and
budget (1, 2, 4 and 8 batches, B): the mean score, its paired difference with N = 16 and with ARS (the committed
validation runs of ``results/improvement_validation.csv``), each with a 95% CI resampling tasks, then seeds. The
shipped operator (N = 32, the committed ``operator`` runs) is a row too. Writes ``results/task_scaling.csv`` and
prints ``scaling_256_vs_16_validation``. Nothing is measured on test tasks.

The validation tasks must stay outside every collection, so the tasks come from two collections of the same
teacher: the shipped operator's (``runs/ars32d64s_x48``: ``train`` 0-31) and one of ``train`` 40-263
(:data:`MORE`). N = 16 takes the first 16 tasks of the first; N = 64 the first 32 of each (``pairs.max_tasks``
counts per collection); N = 256 both whole. The second collection (about 12 minutes on 2 cores)::

    metaimprove collect teacher=ars teacher.n_directions=32 teacher.top_b=16 teacher.n_steps=64 teacher.lr=0.03 \\
        task=halfcheetah_vel start=40 n_tasks=224 seeds=1 iterations=48 workers=2 out=runs/ars32d64s_x224_from40

    python research/task_scaling.py [--counts 16 64 256] [--work runs/task_scaling]

Every stage resumes: ``train`` from its last epoch into ``<work>/n<N>/operator``, ``apply`` run by run into
``<work>/n<N>/apply``. The fits take about 3, 10 and 30 minutes (alone) and each validation apply about 15 on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metaimprove.evaluation.plot import read_curves
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.storage import atomic_write_csv
from metaimprove.training.pairs import PairConfig
from metaimprove.training.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import (
    BUDGET,
    DATASET,
    RESULTS,
    ROOT,
    apply_on_validation,
    dataset_or_exit,
    normalized_scores,
    paired_rows,
    scored_budgets,
)

OUT = RESULTS / "task_scaling.csv"
MORE = ROOT / "runs" / "ars32d64s_x224_from40"
"""the second collection: the shipped teacher on ``train`` 40-263"""
PLANS = {16: ([DATASET], 16), 64: ([DATASET, MORE], 32), 256: ([DATASET, MORE], None)}
"""per task count: the collections it is fitted to and ``pairs.max_tasks`` (per collection; None: all)"""
SHIPPED = 32
"""the shipped operator's task count: its committed validation runs are its row"""


def fitted(n: int, work: Path) -> Path:
    """The operator fitted to ``n`` tasks in ``work`` (resumed or reused if there)."""
    datasets, max_tasks = PLANS[n]
    config = TrainConfig(dataset=[str(dataset_or_exit(d)) for d in datasets], out=str(work / f"n{n}" / "operator"),
                         features=FeatureConfig(n_envs=32, warmup=[[8, 4096]]), pairs=PairConfig(max_tasks=max_tasks),
                         ask_k=1)
    return train(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "task_scaling")
    args = parser.parse_args()
    if 16 not in args.counts:
        raise SystemExit("--counts needs 16: every count is paired with it")
    committed = read_curves([RESULTS / "improvement_validation.csv"])
    scores = {}
    batch = 0.0
    for n in sorted(args.counts):
        operator = fitted(n, args.work)
        batch = float(BatchSchedule.of(OperatorCheckpoint.load(operator)[1]).batch)
        curves = apply_on_validation(operator, args.work / f"n{n}" / "apply")
        scores[n] = normalized_scores(read_curves([curves]), scored_budgets(batch, BUDGET))["operator"]
    known = normalized_scores(committed, scored_budgets(batch, BUDGET))
    scores[SHIPPED] = known["operator"]
    rows = [{"n_tasks": n, "shipped": n == SHIPPED, **row} for n in sorted(scores)
            for row in paired_rows(scores[n], "score", {"n16": scores[16], "ars": known["ars"]}, batch, BUDGET)]
    atomic_write_csv(OUT, list(rows[0]), rows)
    for row in rows:
        print(", ".join(f"{k}: {v}" for k, v in row.items()))
    top = max(args.counts)
    at_b = next(r for r in rows if r["n_tasks"] == top and r["budget"] == "B")
    print(f"scaling_{top}_vs_16_validation: {at_b['score_minus_n16']}")


if __name__ == "__main__":
    main()
