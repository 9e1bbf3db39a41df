"""Evaluation v2 on validation tasks: each method's per-task normalized score at several budgets, the best peer, and
the operator's paired difference from it.

Runs ``metaimprove apply`` with the shipped operator and its peers on validation tasks (``halfcheetah_vel`` ``train``
tasks from :data:`VALIDATION_START` on, which no collection holds), from fresh starts, budget B. Each run's return is
normalized per task (0: the task's start return, 1: its reference return, from ``results/references_runs.csv``,
``benchmarks/references.py``). Per method: the mean normalized score at 1, 2, 4 and 8 batches and at B, with 95% CIs
from a bootstrap that resamples tasks, then seeds. The best peer is the peer with the highest score at B; against it
the operator's paired difference at B (same task and seed), its probability of improvement, and
``steps_to_best_peer`` (the env steps the operator needs to reach the best peer's score at B, over B). Raw returns at
B per task are reported too. Writes ``results/peers_validation.csv`` (every curve), ``results/peers_validation.md``
and ``results/peers_validation_figures.csv`` (``name,value``), and prints the figures as ``name: value`` lines.

    python benchmarks/peers.py [--tasks 8] [--seeds 3] [--methods operator ppo ...] [--workers 2] [--render]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
from pathlib import Path

import numpy as np
from common import BUDGET, OPERATORS, RESULTS, reference_table

from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.plot import read_curves
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.evaluation.stats import (
    Curves,
    Interval,
    TaskScale,
    normalize_curves,
    pair,
    paired_difference,
    probability_of_improvement,
    report_budgets,
    score_ci,
    scores_at,
    steps_to_best_peer,
)
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.sim.tasks import TaskConfig, get_family
from metaimprove.storage import atomic_write_csv

FAMILY = "halfcheetah_vel"
VALIDATION_START = 32
"""the first validation task: the shipped operator's collection holds train tasks 0-31"""
OPERATOR = "operator"
NOT_PEERS = (OPERATOR, "operator_guarded", "no_update")
"""the methods that are not peers: the operator itself and the floor"""
METHODS = ["operator", "ppo", "ppo_tuned", "ars", "teacher_op_batch", "no_update"]
"""the methods run by default: every peer that needs no dataset, DR policy, meta-learned start or SB3"""
CURVES = RESULTS / "peers_validation.csv"
SUMMARY = RESULTS / "peers_validation.md"
FIGURES = RESULTS / "peers_validation_figures.csv"


def run(args: argparse.Namespace) -> None:
    """Apply every method on the validation tasks and keep the curves in ``results/peers_validation.csv``."""
    scratch = Path(tempfile.mkdtemp(prefix="peers-"))
    apply(ApplyConfig(operator_path=str(OPERATORS / f"{FAMILY}.safetensors"), out=str(scratch), task=TaskConfig(FAMILY),
                      split="train", task_start=VALIDATION_START, n_tasks=args.tasks, seeds=args.seeds,
                      budget=args.budget, methods=args.methods, workers=args.workers))
    shutil.copy(scratch / "curves.csv", CURVES)


def fmt(est: Interval) -> str:
    """``mean [lo, hi]`` with three decimals."""
    return f"{est.value:.3f} [{est.lo:.3f}, {est.hi:.3f}]"


def figures(curves: Curves, budget: float, batch: float, n_seeds: int) -> tuple[dict[str, str], list[str]]:
    """The key figures (``name`` -> ``value``) and the summary's markdown lines."""
    tasks = curves.tasks()
    scales = {r["task"]: TaskScale(float(r["start"]), float(r["reference"]))
              for r in reference_table(list(tasks), n_seeds)}
    normalized = normalize_curves(curves, scales)
    methods = list(dict.fromkeys(curves.method.tolist()))
    budgets = sorted({b for b in report_budgets(batch, budget) if b <= budget})
    scores = {m: scores_at(normalized.where(method=m), budgets) for m in methods}
    estimates = {m: {b: score_ci(scores[m][b]) for b in budgets} for m in methods}
    peers = [m for m in methods if m not in NOT_PEERS]
    best = max(peers, key=lambda m: estimates[m][budget].value)
    paired = pair(scores[OPERATOR][budget], scores[best][budget])
    diff, poi = paired_difference(paired), probability_of_improvement(paired)
    steps = steps_to_best_peer(normalized.where(method=OPERATOR), normalized.where(method=best), budget)
    out = {"best_peer_validation": best, "paired_vs_best_peer_validation": fmt(diff),
           "probability_of_improvement_vs_best_peer_validation": fmt(poi),
           "steps_to_best_peer_validation": fmt(steps)}
    out |= {f"score_at_B_{m}_validation": fmt(estimates[m][budget]) for m in methods}
    if 2 * batch in estimates[OPERATOR]:
        out |= {f"few_shot_2_{m}_validation": fmt(estimates[m][2 * batch]) for m in (OPERATOR, best)}
    labels = ["B" if b == budget else f"{b / batch:g} batch{'es' if b > batch else ''}" for b in budgets]
    lines = [f"Validation tasks: `{FAMILY}` `train` {VALIDATION_START}–{VALIDATION_START + len(tasks) - 1} "
             f"({len(tasks)} tasks × {n_seeds} seeds), fresh starts, B = {budget:g} env steps, batches of {batch:g}. "
             "Mean per-task normalized score (0: the task's start return, 1: its reference return) with 95% CIs "
             "resampling tasks, then seeds.", "",
             f"| method | {' | '.join(labels)} |", f"| --- |{' --- |' * len(labels)}",
             *(f"| `{m}`{' **best peer**' if m == best else ''} | "
               f"{' | '.join(fmt(estimates[m][b]) for b in budgets)} |" for m in methods), "",
             f"The operator against the best peer (`{best}`) at B, paired by task and seed ({paired.n_pairs} pairs): "
             f"difference {fmt(diff)}, probability of improvement {fmt(poi)}; it reaches the best peer's score at B "
             f"in {fmt(steps)} of B.", "",
             "Raw returns at B, mean over seeds:", "",
             f"| task | start | reference | {' | '.join(f'`{m}`' for m in methods)} |",
             f"| --- | --- | --- |{' --- |' * len(methods)}"]
    for task in tasks:
        cells = []
        for m in methods:
            finals = scores_at(curves.where(method=m, task=task), [budget])[budget]
            cells.append(f"{np.mean(list(finals.values())):.1f}")
        lines.append(f"| {task} | {scales[task].start:.1f} | {scales[task].reference:.1f} | {' | '.join(cells)} |")
    return out, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8, help="validation tasks")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per task")
    parser.add_argument("--budget", type=int, default=BUDGET, help="B in env steps per run")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--render", action="store_true", help="run nothing: recompute from the committed curves")
    args = parser.parse_args()
    if OPERATOR not in args.methods or not set(args.methods) - set(NOT_PEERS):
        raise SystemExit("--methods needs the operator and at least one peer")
    get_family(FAMILY)
    if not args.render:
        run(args)
    curves = read_curves([CURVES])
    _, ckpt = OperatorCheckpoint.load(OPERATORS / f"{FAMILY}.safetensors")
    n_seeds = len(set(curves.seed.tolist()))
    key, lines = figures(curves, float(args.budget), float(BatchSchedule.of(ckpt).batch), n_seeds)
    SUMMARY.write_text("\n".join(["# Evaluation v2 on validation tasks (`benchmarks/peers.py`)", "", *lines]) + "\n")
    atomic_write_csv(FIGURES, ["name", "value"], [{"name": k, "value": v} for k, v in key.items()])
    with FIGURES.open() as f:
        for row in csv.DictReader(f):
            print(f"{row['name']}: {row['value']}")


if __name__ == "__main__":
    main()
