"""Why does one application do about one teacher update's work, whatever k it is asked for? The geometry of steps.

On the runs of the tasks an operator was *not* fitted to (its checkpoint's validation tasks of the collection),
in the coordinates the operator predicts in (each target θⁿ⁺ᵏ in the frame of the normalizer θⁿ's output goes
with), measures:

* the teacher's k-step displacement ``|θⁿ⁺ᵏ − θⁿ|`` over ``k`` times its mean one-step length: 1 if its steps
  kept one direction, ``1/√k`` if they were a random walk (the k − 1 later steps then hold nothing one batch τⁿ
  can predict, and a hindsight k-step target is the one-step target plus noise);
* the cosine between consecutive teacher steps;
* the operator asked for each trained k (the default improvement of that k): its step length over the teacher's
  one step from the same batch, and its cosine to that step and to the k-step target;
* the share of the teacher's envs the operator reads (``features.envs``; 1 when it reads them all): the rest of
  the batch is part of the teacher's step but not of what the operator sees.

Writes ``results/step_geometry.csv`` (``quantity, k, value``).

    python research/step_geometry.py [--dataset runs/ars32d64s_x48] [--operator OPERATOR]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch.nn.functional import cosine_similarity

from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.storage import atomic_write_csv
from metaimprove.teachers import make_teacher
from metaimprove.training.pairs import PairConfig, build_pairs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import DATASET, RESULTS, dataset_or_exit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(DATASET), help="the collection the operator was fitted to")
    parser.add_argument("--operator", default=str(RESULTS / "operators" / "halfcheetah_vel.safetensors"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = dataset_or_exit(Path(args.dataset))
    op, ckpt = OperatorCheckpoint.load(args.operator)
    pairs = build_pairs(dataset, PairConfig(ks=list(ckpt.ks)), ckpt.features)
    held_out = set(pairs.task_of_pair) - set(ckpt.tasks)
    if not held_out:
        raise SystemExit(f"every task of {dataset} trained {args.operator}: no held-out runs to measure on")
    index = pairs.select(held_out)
    log_k = pairs.ask[index, 0]
    one = index[log_k == 0]
    # The teacher's one step from each source batch (k = 1 pairs), keyed by source encoding.
    feats, _, target, _ = pairs.batch(one)
    step = dict(zip(pairs.source[one].tolist(), target - feats["theta"], strict=True))
    successor = dict(zip(pairs.source[one].tolist(), pairs.target_item[one].tolist(), strict=True))
    mean_step = torch.stack(list(step.values())).norm(dim=-1).mean()
    consecutive = [float(cosine_similarity(step[s], step[successor[s]], dim=0))
                   for s in step if successor[s] in step]
    teacher_envs = make_teacher(ckpt.teacher).batch_shape[0]
    # k-independent quantities are filed under k = 1.
    rows = [{"quantity": "teacher_consecutive_step_cosine", "k": 1, "value": sum(consecutive) / len(consecutive)},
            {"quantity": "operator_env_share", "k": 1, "value": (ckpt.features.n_envs or teacher_envs) / teacher_envs}]
    for k in ckpt.ks:
        sel = index[log_k == math.log2(k)]
        sel = sel[[int(s) in step for s in pairs.source[sel]]]
        feats, _, target, _ = pairs.batch(sel)
        displacement = target - feats["theta"]
        ones = torch.stack([step[int(s)] for s in pairs.source[sel]])
        with torch.no_grad():
            delta = op(feats, ckpt.ask(k).expand(len(sel), -1)) - feats["theta"]
        rows += [
            {"quantity": "teacher_displacement_over_k_steps", "k": k,
             "value": float(displacement.norm(dim=-1).mean() / (k * mean_step))},
            {"quantity": "random_walk_displacement_over_k_steps", "k": k, "value": k ** -0.5},
            {"quantity": "operator_step_over_teacher_step", "k": k,
             "value": float((delta.norm(dim=-1) / ones.norm(dim=-1)).mean())},
            {"quantity": "operator_cosine_to_teacher_step", "k": k,
             "value": float(cosine_similarity(delta, ones, dim=-1).mean())},
            {"quantity": "operator_cosine_to_k_step_target", "k": k,
             "value": float(cosine_similarity(delta, displacement, dim=-1).mean())},
        ]
    path = RESULTS / "step_geometry.csv"
    atomic_write_csv(path, ["quantity", "k", "value"], ({**r, "value": f"{r['value']:.3f}"} for r in rows))
    for r in rows:
        print(f"{r['quantity']} (k={r['k']}): {r['value']:.3f}")
    print(f"wrote {path} ({len(held_out)} held-out tasks of {dataset})")


if __name__ == "__main__":
    main()
