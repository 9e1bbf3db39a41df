"""The memorization audit of every shipped way of deploying the operator, on validation tasks.

Does the operator improve a held-out policy, or steer it to a training checkpoint it recalls? Each way of deploying
the shipped ``halfcheetah_vel`` operator (:data:`METHODS`: from fresh starts, and from its learned start) and tuned
PPO, a learner that never saw the training runs, are applied on the validation tasks (``train`` 32-39 × 3 seeds, B)
with their final policies saved. Per method: the median distance, θ folded into one normalizer, from its final
policies to the nearest θ of any run of the operator's training collection, and the same for tuned PPO; and the
median distance between two tuned-PPO seeds' final policies on one task, how far apart two honest learners end.
``ratio`` is the first over the last: a memorizing operator would land near training checkpoints, far closer than two
independent learners land to each other (a ratio well below 1, and below PPO's own). ``start_to_nearest_checkpoint``
is the same distance for the method's starts (fresh θ⁰s, or the learned start, itself meta-trained on the training
runs), to tell how much of a final policy's closeness it started with. Writes
``results/memorization.csv`` and prints each row. Nothing is measured on test tasks.

    python benchmarks/memorization.py [--dataset runs/ars32d64s_x48] [--tasks 8] [--seeds 3] [--work DIR]

The training collection is not in git: ``benchmarks/improvement.py``'s docstring gives the command that recreates
it. About 20 minutes on 2 cores (the apply runs resume into ``--work``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import (
    BUDGET,
    DATASET,
    OPERATORS,
    RESULTS,
    ROOT,
    dataset_or_exit,
    folded,
    memorization,
    training_snapshots,
    validation_start,
)

from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.protocol import ApplyConfig, learned_start_path
from metaimprove.interop.sb3 import load_any_policy
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.sim.tasks import TaskConfig
from metaimprove.storage import atomic_write_csv

FAMILY = "halfcheetah_vel"
METHODS = ("operator", "operator_learned_start")
"""the ways of deploying the operator that ship"""
PEER = "ppo_tuned"
"""the honest learner the distances are compared with"""
OUT = RESULTS / "memorization.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DATASET, help="the operator's training collection")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3, help="at least 2: PPO's seed-to-seed distance needs two")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "memorization")
    args = parser.parse_args()
    if args.seeds < 2 or args.tasks < 1:
        raise SystemExit("--seeds must be >= 2 (two PPO seeds per task) and --tasks >= 1")
    snapshots = training_snapshots(dataset_or_exit(args.dataset))
    config = ApplyConfig(operator_path=str(OPERATORS / f"{FAMILY}.safetensors"), out=str(args.work),
                         task=TaskConfig(FAMILY), split="train", task_start=validation_start(FAMILY),
                         n_tasks=args.tasks, seeds=args.seeds, budget=BUDGET, methods=[*METHODS, PEER],
                         save_policies=True, workers=2)
    apply(config)
    _, ckpt = OperatorCheckpoint.load(config.operator_path)
    starts = {"operator": [ckpt.fresh_policy(seed) for seed in range(args.seeds)],
              "operator_learned_start": [load_any_policy(learned_start_path(config))]}
    rows = []
    for method in METHODS:
        start = torch.stack([folded(p) for p in starts[method]])
        from_start = float(torch.cdist(start, snapshots).min(1).values.median())
        audit = memorization(args.work, snapshots, method, PEER)
        mine, honest = audit[f"{method}_to_nearest_checkpoint"], audit[f"{PEER}_seed_to_seed"]
        rows.append({"method": method, "to_nearest_checkpoint": f"{mine:.3f}",
                     f"{PEER}_to_nearest_checkpoint": f"{audit[f'{PEER}_to_nearest_checkpoint']:.3f}",
                     f"{PEER}_seed_to_seed": f"{honest:.3f}", "ratio": f"{mine / honest:.3f}",
                     "start_to_nearest_checkpoint": f"{from_start:.3f}",
                     "runs": f"{args.tasks} tasks × {args.seeds} seeds"})
    atomic_write_csv(OUT, list(rows[0]), rows)
    for row in rows:
        print(", ".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
