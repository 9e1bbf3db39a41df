"""Evaluation v2: each method's per-task normalized score at several budgets, the best peer (chosen on validation
tasks), and the operator's paired difference from it; ``--final`` alone reads the test and ood splits.

Runs ``metaimprove apply`` with the shipped operator and its peers on validation tasks (``halfcheetah_vel`` ``train``
tasks from :data:`VALIDATION_START` on, which no collection holds), from fresh starts, budget B. Each run's return is
normalized per task (0: the task's start return, 1: its reference return, from ``results/references_runs.csv``,
``benchmarks/references.py``). Per method: the mean normalized score at 1, 2, 4 and 8 batches and at B, with 95% CIs
from a bootstrap that resamples tasks, then seeds. The best peer is the peer with the highest score at B; against it
the operator's paired difference at B (same task and seed), its probability of improvement, and
``steps_to_best_peer`` (the env steps the operator needs to reach the best peer's score at B, over B). Raw returns at
B per task are reported too. Writes ``results/peers_<set>.csv`` (every curve), ``results/peers_<set>.md`` and
``results/peers_<set>_figures.csv`` (``name,value``) for ``<set>`` = ``validation``, and prints the figures as
``name: value`` lines.

``--final`` runs the same methods on ``test`` and ``ood`` tasks against the best peer the validation run chose. It
refuses a working tree with changes, and a reference table that lacks any of its tasks, before anything runs; then it
appends one row (date, commit, a hash of its settings, methods) to ``results/test_ledger.csv`` and writes
``results/peers_test*`` and ``results/peers_ood*``. ``--render`` recomputes every set's figures from its committed
curves and prints ``test_ledger_reads``.

    python benchmarks/peers.py [--tasks 8] [--seeds 3] [--methods operator ppo ...] [--workers 2] [--render]
    python benchmarks/peers.py --final [--tasks 16] ...
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from common import BUDGET, OPERATORS, RESULTS, ROOT, reference_table

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
SETS = {"validation": ("train", VALIDATION_START), "test": ("test", 0), "ood": ("ood", 0)}
"""each set of tasks: its split and its first task"""
LEDGER = RESULTS / "test_ledger.csv"
LEDGER_FIELDS = ["date", "commit", "config_sha256", "methods", "tasks", "seeds", "budget"]


def outputs(name: str) -> tuple[Path, Path, Path]:
    """The curves, summary and figures files of task set ``name``."""
    return RESULTS / f"peers_{name}.csv", RESULTS / f"peers_{name}.md", RESULTS / f"peers_{name}_figures.csv"


def task_names(name: str, n_tasks: int) -> list[str]:
    """The tasks of set ``name``."""
    split, start = SETS[name]
    return [t.name for t in get_family(FAMILY).tasks(split, n_tasks, start=start)]


def run(args: argparse.Namespace, name: str) -> None:
    """Apply every method on task set ``name`` and keep the curves in ``results/peers_<name>.csv``."""
    split, start = SETS[name]
    scratch = Path(tempfile.mkdtemp(prefix="peers-"))
    apply(ApplyConfig(operator_path=str(OPERATORS / f"{FAMILY}.safetensors"), out=str(scratch), task=TaskConfig(FAMILY),
                      split=split, task_start=start, n_tasks=args.tasks, seeds=args.seeds,
                      budget=args.budget, methods=args.methods, workers=args.workers))
    shutil.copy(scratch / "curves.csv", outputs(name)[0])


def seal(args: argparse.Namespace) -> None:
    """Before a ``--final`` run: refuse a changed tree or missing references, then record the read in the ledger."""
    changed = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    if changed:
        raise SystemExit(f"--final reads the test split only from a clean tree: {len(changed)} changed paths "
                         f"({changed[0].strip()}, ...); commit them first")
    for name in ("test", "ood"):
        reference_table(task_names(name, args.tasks), args.seeds)  # exits naming the tasks it lacks
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in ("workers", "render")}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    row = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "commit": commit,
           "config_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
           "methods": " ".join(args.methods), "tasks": args.tasks, "seeds": args.seeds, "budget": args.budget}
    new = not LEDGER.exists()
    with LEDGER.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LEDGER_FIELDS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow(row)


def ledger_reads() -> int:
    """How many times ``--final`` has read the test split."""
    if not LEDGER.exists():
        return 0
    with LEDGER.open() as f:
        return sum(1 for _ in csv.DictReader(f))


def fmt(est: Interval) -> str:
    """``mean [lo, hi]`` with three decimals."""
    return f"{est.value:.3f} [{est.lo:.3f}, {est.hi:.3f}]"


def figures(curves: Curves, budget: float, batch: float, n_seeds: int, name: str,
            best: str | None = None) -> tuple[dict[str, str], list[str]]:
    """The key figures (``name`` -> ``value``) and the summary's markdown lines of task set ``name``, against ``best``
    (default: the peer with the highest score at B here, which is how validation chooses it)."""
    tasks = curves.tasks()
    scales = {r["task"]: TaskScale(float(r["start"]), float(r["reference"]))
              for r in reference_table(list(tasks), n_seeds)}
    normalized = normalize_curves(curves, scales)
    methods = list(dict.fromkeys(curves.method.tolist()))
    budgets = sorted({b for b in report_budgets(batch, budget) if b <= budget})
    scores = {m: scores_at(normalized.where(method=m), budgets) for m in methods}
    estimates = {m: {b: score_ci(scores[m][b]) for b in budgets} for m in methods}
    if best is None:
        best = max((m for m in methods if m not in NOT_PEERS), key=lambda m: estimates[m][budget].value)
    paired = pair(scores[OPERATOR][budget], scores[best][budget])
    diff, poi = paired_difference(paired), probability_of_improvement(paired)
    steps = steps_to_best_peer(normalized.where(method=OPERATOR), normalized.where(method=best), budget)
    out = {f"best_peer_{name}": best, f"paired_vs_best_peer_{name}": fmt(diff),
           f"probability_of_improvement_vs_best_peer_{name}": fmt(poi),
           f"steps_to_best_peer_{name}": fmt(steps)}
    out |= {f"score_at_B_{m}_{name}": fmt(estimates[m][budget]) for m in methods}
    if 2 * batch in estimates[OPERATOR]:
        out |= {f"few_shot_2_{m}_{name}": fmt(estimates[m][2 * batch]) for m in (OPERATOR, best)}
    labels = ["B" if b == budget else f"{b / batch:g} batch{'es' if b > batch else ''}" for b in budgets]
    split, start = SETS[name]
    lines = [f"{name.capitalize()} tasks: `{FAMILY}` `{split}` {start}–{start + len(tasks) - 1} "
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


def report(args: argparse.Namespace, name: str, batch: float, best: str | None) -> dict[str, str]:
    """Recompute task set ``name``'s summary and figures from its curves; returns the figures."""
    curves_csv, summary, figures_csv = outputs(name)
    curves = read_curves([curves_csv])
    n_seeds = len(set(curves.seed.tolist()))
    key, lines = figures(curves, float(args.budget), batch, n_seeds, name, best)
    title = f"# Evaluation v2 on {name} tasks (`benchmarks/peers.py`)"
    summary.write_text("\n".join([title, "", *lines]) + "\n")
    atomic_write_csv(figures_csv, ["name", "value"], [{"name": k, "value": v} for k, v in key.items()])
    return key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8, help="tasks per set (validation: 8; --final: at least 16)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per task")
    parser.add_argument("--budget", type=int, default=BUDGET, help="B in env steps per run")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--final", action="store_true", help="the test and ood splits (recorded in the ledger)")
    parser.add_argument("--render", action="store_true", help="run nothing: recompute from the committed curves")
    args = parser.parse_args()
    if OPERATOR not in args.methods or not set(args.methods) - set(NOT_PEERS):
        raise SystemExit("--methods needs the operator and at least one peer")
    if args.final and args.render:
        raise SystemExit("--final runs the test split and --render runs nothing: give one of them")
    _, ckpt = OperatorCheckpoint.load(OPERATORS / f"{FAMILY}.safetensors")
    batch = float(BatchSchedule.of(ckpt).batch)
    chosen = outputs("validation")[2]
    if args.final:
        if not chosen.exists():
            raise SystemExit("--final compares against the best peer validation chose: run benchmarks/peers.py first")
        seal(args)
    names = [n for n in SETS if outputs(n)[0].exists()] if args.render else ["test", "ood"] if args.final \
        else ["validation"]
    key: dict[str, str] = {}
    for name in names:
        if not args.render:
            run(args, name)
        best = None if name == "validation" else _read(chosen)["best_peer_validation"]
        key |= report(args, name, batch, best)
    key["test_ledger_reads"] = str(ledger_reads())
    for name, value in key.items():
        print(f"{name}: {value}")


def _read(path: Path) -> dict[str, str]:
    """A figures file's ``name`` -> ``value``."""
    with path.open() as f:
        return {r["name"]: r["value"] for r in csv.DictReader(f)}


if __name__ == "__main__":
    main()
