"""Is the teacher's step size tuned for the budget? ARS's return at B against its step size α.

The operator takes about one teacher step per application (``benchmarks/step_geometry.py``), so a faster
operator could come cheaply from a teacher whose α is too small for the budget: then a longer step along the
same direction, by the teacher or by the operator, would buy returns. This benchmark runs the shipped
operator's teacher with α scaled, everything else (directions, ν, batch, starts, seeds, evaluation) as in
``metaimprove apply``'s ``ars`` arm, on the validation tasks (``train`` tasks 32–35, in no collection) and
the held-out ``test`` tasks, from fresh starts at B = 61440 env steps, and writes
``results/ars_step_size.csv`` (split, α, IQM return at B [95% CI]).

    python benchmarks/ars_step_size.py [--lrs 0.01 0.02 0.04 0.08] [--tasks 4] [--seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

from heldout import add_arguments, apply_settings, at_budget
from improvement import fmt

from metaimprove.operator import ImprovementOperator, OperatorCheckpoint
from metaimprove.storage import atomic_write_csv

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
OPERATOR = RESULTS / "operators" / "halfcheetah_vel.safetensors"


def with_teacher_lr(op: ImprovementOperator, ckpt: OperatorCheckpoint, lr: float, folder: Path) -> Path:
    """A copy of the checkpoint ``(op, ckpt)`` whose recorded teacher (the one ``apply`` runs as the ``ars``
    baseline) has step size ``lr``; written under ``folder``."""
    teacher = {**ckpt.teacher, "config": {**ckpt.teacher["config"], "lr": lr}}
    path = folder / f"lr{lr:g}.safetensors"
    dataclasses.replace(ckpt, teacher=teacher).save(path, op, {})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.02, 0.04, 0.08], help="ARS step sizes α")
    args = parser.parse_args()
    op, shipped = OperatorCheckpoint.load(OPERATOR)
    if shipped.teacher["name"] != "ars":
        raise SystemExit(f"{OPERATOR} was fitted to {shipped.teacher['name']}, not ARS")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lr in args.lrs:
            checkpoint = with_teacher_lr(op, shipped, lr, Path(tmp))
            for split in ("val", "test"):
                est, budget = at_budget(checkpoint, Path(tmp) / f"{split}_{lr:g}", ["ars"],
                                        apply_settings(args, split))
                est = est["ars"]
                print(f"{split} lr={lr:g}: ARS at B {fmt(est)}", flush=True)
                rows.append({"split": split, "lr": lr, "shipped": int(lr == shipped.teacher["config"]["lr"]),
                             "budget": int(budget), "tasks": args.tasks, "seeds": args.seeds,
                             "ars_at_B": fmt(est), "iqm": round(est.iqm, 2), "lo": round(est.lo, 2),
                             "hi": round(est.hi, 2)})
    atomic_write_csv(RESULTS / "ars_step_size.csv", list(rows[0]), rows)
    print(f"wrote {RESULTS / 'ars_step_size.csv'}")


if __name__ == "__main__":
    main()
