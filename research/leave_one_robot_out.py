"""Does one shape-agnostic operator trained on four robots improve policies of a fifth robot it never saw?

Leave one robot out: for each held-out family (default ``hopper_rand_params`` and ``walker2d_rand_params``), one
operator with ``features.agnostic=true`` is fitted to the ARS collections of the other four robots of
:data:`FAMILIES` and applied on the held-out family's validation tasks (``train`` tasks after its shipped
collection, outside every collection: the held-out robot's own collection feeds only the other held-out runs) ×
seeds, from fresh starts, for the family's budget B (its pipeline's applications × the operator's batch, as
``benchmarks/families.py`` applies it). Beside it, with the same starts, seeds and budget, run the held-out family's
own ARS teacher (``ars``: the operator's teacher, checked to be the family's shipped one), ``teacher_op_batch``
(left out while the operator reads its teacher's whole batch without a warm-up: it is then ``ars``, run for run),
PPO at its defaults and tuned (``ppo``, ``ppo_tuned``), and with ``--sac`` SAC. Evaluation v2 scores every run per
task, normalized (0 the task's start return, 1 its reference return: the best of ARS and tuned PPO after 8 B from
those starts, ``benchmarks/references.py``'s runs, made here for the held-out tasks). The best peer is the peer with
the highest mean score at B.

Which collection each robot uses: its family's shipped collection config
(``results/operators/<family>.collect.yaml``), which for the five of :data:`FAMILIES` is ARS with one set of settings
(8 directions × 256 steps, lr 0.02, top 4).
HalfCheetah enters as ``halfcheetah_rand_params``, not ``halfcheetah_vel``: the shipped ``halfcheetah_vel``
collection is ARS with 32 directions × 64 steps, a union of different batch shapes is refused by ``train``
(``training.pairs.build_groups``), and the operator would otherwise also learn which robot it is on from how the
batch was explored; ``halfcheetah_rand_params`` also varies the physics only, as both held-out families do.

Stages, each resumable (a rerun reuses what finished: collect, train and apply resume into their directories,
reference runs are appended as they end):

1. collect each robot's dataset into ``<work>/collect/<family>``;
2. per held-out family, train the operator on the other four into ``<work>/<heldout>/operator`` (``metaimprove
   train``'s defaults and ``features.agnostic=true``, the robots' collections in :data:`FAMILIES`' order);
3. apply it and the peers on the validation tasks into ``<work>/<heldout>/apply``;
4. the reference runs of those tasks, appended to ``results/references_runs.csv`` (their rows join
   ``results/references.csv``);
5. ``results/leave_one_robot_out.csv``, one row per held-out family and budget (1, 2, 4 and 8 batches and B): the
   operator's mean normalized score, each peer's, the operator's paired difference with each peer and with the best
   peer, each with a 95% CI resampling tasks, then seeds, and ``steps_to_best_peer`` (env steps the operator's mean
   score needs to reach the best peer's at that budget, over the budget; inf when it never does). A rerun for some
   held-out families keeps the other families' rows.

``--quick`` runs every stage at tiny sizes (2 tasks × 3 updates per robot from a 2-direction ARS, a tiny operator,
1 task × 1 seed, B = 2048, references over 1 seed, one worker) under ``--work`` (default ``runs/loro_quick``) and
writes its csv and reference runs there, never to ``results/``.

    python research/leave_one_robot_out.py [--heldout hopper_rand_params walker2d_rand_params] [--tasks 8] \
        [--seeds 3] [--sac] [--workers 2] [--work runs/loro]
    python research/leave_one_robot_out.py --quick [--heldout hopper_rand_params] [--work DIR]

Cost on 2 cores (the full default, both held-out robots, without SAC), from CPU times measured on the development
machine: one hopper B of ARS takes 6.7 s of one core and of tuned PPO 11.6 s (walker2d: 6.3 s and 12.5 s), and
the collections' env steps scale by the families' step costs (``results/family_cost.csv``). Collections (5.8 M env
steps) about 5 minutes; the two fits 15-30 minutes (a union of about 3200 training pairs, ``metaimprove train``'s
early stopping; ``research/operator_variants.py``'s agnostic fit of 4425 pairs took 15 s an epoch for 45 epochs);
apply, 8 tasks × 3 seeds × 4 methods per robot with an evaluation after every batch, about 25 minutes; the
references, 8 B of ARS and of tuned PPO per task and seed, about an hour. About two hours in all; ``--sac`` adds
a gradient step per env step to 48 runs, hours more. ``--quick`` takes about a minute (40 s with one held-out
robot).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from metaimprove.data.collect import CollectConfig, collect
from metaimprove.evaluation.plot import read_curves
from metaimprove.evaluation.stats import deployed_until, scores_at, steps_to_best_peer
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.networks import OperatorConfig
from metaimprove.operator.runtime import BatchSchedule, operator_teacher
from metaimprove.sim.tasks import TaskConfig, get_family
from metaimprove.storage import atomic_write_csv
from metaimprove.teachers import make_teacher, recorded_config
from metaimprove.training.pairs import PairConfig
from metaimprove.training.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py, references.py
from common import (
    OPERATORS,
    REFERENCE_RUNS,
    REFERENCE_SEEDS,
    RESULTS,
    ROOT,
    apply_on_validation,
    family_budget,
    interval,
    normalized,
    paired_rows,
    scored_budgets,
    shipped_collection,
    validation_start,
)
from references import LONG_RUN, TABLE, run_references, write_table

FAMILIES = ("halfcheetah_rand_params", "hopper_rand_params", "walker2d_rand_params", "ant_dir", "swimmer_vel")
"""one family per robot (HalfCheetah, Hopper, Walker2d, Ant, Swimmer), each collected as its shipped operator was"""
HELDOUT = ("hopper_rand_params", "walker2d_rand_params")
"""the robots held out by default: the issue's two examples"""
PEERS = ("ars", "teacher_op_batch", "ppo", "ppo_tuned")
"""the peers run beside the operator (``--sac`` adds SAC)"""
OUT = RESULTS / "leave_one_robot_out.csv"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What ``--quick`` shrinks: the collections, the operator's fit, the applied runs and the references."""

    collect: dict[str, Any]
    """changes to every robot's shipped collection config (``teacher`` holds changes to its teacher)"""
    train: dict[str, Any]
    """TrainConfig settings besides the datasets, out and ``features.agnostic``"""
    tasks: int
    seeds: int
    budget: int | None
    """B in env steps; None: the held-out family's (``common.family_budget``)"""
    reference_seeds: int
    where: Path | None
    """where the csv and the reference runs go; None: results/"""


FULL = Sizes(collect={}, train={}, tasks=8, seeds=3, budget=None, reference_seeds=REFERENCE_SEEDS, where=None)
QUICK = Sizes(collect={"n_tasks": 2, "iterations": 3, "teacher": {"n_directions": 2, "top_b": 2, "n_steps": 64}},
              train={"operator": OperatorConfig(hidden=16, context_dim=8, param_hidden=8), "max_epochs": 2,
                     "features": {"n_transitions": 32, "n_states": 16}, "pairs": PairConfig(ks=[1])},
              tasks=1, seeds=1, budget=2048, reference_seeds=1, where=None)


def collect_robot(family: str, out: Path, sizes: Sizes, workers: int) -> Path:
    """Stage 1: ``family``'s ARS collection from its shipped config (with ``sizes``' changes) into ``out``."""
    config = shipped_collection(family)
    changes = dict(sizes.collect)
    teacher = recorded_config({"name": config["teacher_name"],
                               "config": config["teacher"] | changes.pop("teacher", {})})
    settings = {k: config[k] for k in ("split", "start", "n_tasks", "seeds", "seed_start", "iterations", "hidden")}
    collect(CollectConfig(task=TaskConfig(family), teacher=teacher, **(settings | changes), workers=workers,
                          out=str(out)))
    return out


def train_heldout(heldout: str, datasets: list[Path], out: Path, sizes: Sizes) -> Path:
    """Stage 2: the shape-agnostic operator fitted to ``datasets`` (the other robots') into ``out``."""
    settings = dict(sizes.train)
    features = FeatureConfig(agnostic=True, **settings.pop("features", {}))
    print(f"train: one operator on {', '.join(d.name for d in datasets)} (held out: {heldout}) -> {out}", flush=True)
    return train(TrainConfig(dataset=[str(d) for d in datasets], out=str(out), features=features, **settings))


def check_own_teacher(operator: Path, heldout: str) -> None:
    """Exit unless ``operator``'s teacher and fresh policies on ``heldout`` are those of the held-out family's shipped
    operator: its ``ars`` peer is then the family's own ARS teacher and its starts the references' starts."""
    _, ckpt = OperatorCheckpoint.load(operator)
    _, own = OperatorCheckpoint.load(OPERATORS / f"{heldout}.safetensors")
    task = get_family(heldout).task("train", validation_start(heldout))
    if recorded_config(ckpt.teacher) != recorded_config(own.teacher) or ckpt.on(task).spec != own.spec:
        raise SystemExit(f"{operator}'s teacher {ckpt.teacher} or policy spec {ckpt.on(task).spec} is not "
                         f"{heldout}'s own ({own.teacher}, {own.spec})")


def peers(operator: Path, sac: bool) -> list[str]:
    """The peers to run: :data:`PEERS` (``teacher_op_batch`` only where the operator's batches differ from its
    teacher's, since it is otherwise ``ars`` run for run) and SAC if asked."""
    _, ckpt = OperatorCheckpoint.load(operator)
    schedule = BatchSchedule.of(ckpt)
    same = not schedule.warmup and operator_teacher(ckpt).batch_shape == make_teacher(ckpt.teacher).batch_shape
    return [p for p in PEERS if not (p == "teacher_op_batch" and same)] + (["sac"] if sac else [])


def heldout_rows(heldout: str, curves_file: Path, operator: Path, budget: int, sizes: Sizes,
                 runs_file: Path) -> list[dict[str, object]]:
    """Stage 5's rows of one held-out family: per budget, the operator against every peer and the best peer."""
    _, ckpt = OperatorCheckpoint.load(operator)
    batch = float(BatchSchedule.of(ckpt).batch)
    budgets = scored_budgets(batch, budget)
    curves = normalized(read_curves([curves_file]), runs_file, sizes.reference_seeds)
    deployed = {m: deployed_until(curves.where(method=m), budget) for m in curves.methods()}
    scores = {m: scores_at(runs, budgets) for m, runs in deployed.items()}
    others = [m for m in scores if m != "operator"]
    best = max(others, key=lambda m: float(np.mean(list(scores[m][budget].values()))))  # max keeps the first of equals
    baselines = {m: scores[m] for m in others} | {"best_peer": scores[best]}
    n_tasks, n_seeds = len(curves.tasks()), len(curves.where(method="operator").runs()[curves.tasks()[0]])
    rows = []
    for row in paired_rows(scores["operator"], "operator", baselines, batch, budget):
        at = float(row["env_steps"])  # type: ignore[arg-type]
        steps = steps_to_best_peer(deployed["operator"], deployed_until(deployed[best], at), at)
        rows.append({"heldout": heldout, "trained_on": " ".join(ckpt.families), **row, "best_peer_method": best,
                     "steps_to_best_peer": interval(steps), "tasks_x_seeds": f"{n_tasks} × {n_seeds}",
                     "source": f"research/leave_one_robot_out.py {' '.join(sys.argv[1:])}".strip()})
    return rows


def write_rows(path: Path, rows: list[dict[str, object]], key: str = "heldout") -> None:
    """Write ``rows`` to ``path`` in place of the rows with their ``key`` values (default: their held-out families);
    the other rows stay."""
    kept: list[dict[str, object]] = []
    if path.exists():
        with path.open() as f:
            kept = list(csv.DictReader(f))
    done = {r[key] for r in rows}
    table = [r for r in kept if r[key] not in done] + rows
    fields = list(dict.fromkeys(k for r in table for k in r))
    atomic_write_csv(path, fields, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heldout", nargs="+", choices=FAMILIES, default=list(HELDOUT),
                        help="the held-out families; each gets an operator trained on the other four robots")
    parser.add_argument("--tasks", type=int, help="validation tasks per held-out family (default 8; --quick 1)")
    parser.add_argument("--seeds", type=int, help="seeds per task (default 3; --quick 1)")
    parser.add_argument("--sac", action="store_true", help="run SAC as a peer too (a gradient step per env step)")
    parser.add_argument("--workers", type=int, help="parallel processes (default 2; --quick: 1, which starts none "
                                                    "for apply and the references)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes end to end; everything, the csv too, goes under --work, nothing to results/")
    parser.add_argument("--work", type=Path, help="where the stages' outputs go (default runs/loro, --quick: "
                                                  "runs/loro_quick)")
    args = parser.parse_args()
    work = args.work or ROOT / "runs" / ("loro_quick" if args.quick else "loro")
    sizes = dataclasses.replace(QUICK, where=work) if args.quick else FULL
    sizes = dataclasses.replace(sizes, tasks=args.tasks or sizes.tasks, seeds=args.seeds or sizes.seeds)
    workers = args.workers or (1 if args.quick else 2)
    runs_file = REFERENCE_RUNS if sizes.where is None else sizes.where / "references_runs.csv"
    began = time.perf_counter()

    def stage(text: str) -> None:
        print(f"{text} ({(time.perf_counter() - began) / 60:.1f} minutes in)", flush=True)

    needed = [f for f in FAMILIES if any(f != h for h in args.heldout)]
    stage(f"[1/5] collect: {', '.join(needed)}")
    datasets = {f: collect_robot(f, work / "collect" / f, sizes, workers) for f in needed}

    stage("[2/5] train")
    operators = {h: train_heldout(h, [datasets[f] for f in FAMILIES if f != h], work / h / "operator", sizes)
                 for h in args.heldout}
    if not sizes.collect:
        for heldout, operator in operators.items():
            check_own_teacher(operator, heldout)

    budgets = {h: sizes.budget or family_budget(h, operator) for h, operator in operators.items()}
    curves = {}
    for heldout, operator in operators.items():
        methods = ("operator", *peers(operator, args.sac))
        stage(f"[3/5] apply on {heldout}: {', '.join(methods)}, {sizes.tasks} validation tasks × {sizes.seeds} seeds, "
              f"B = {budgets[heldout]}")
        curves[heldout] = apply_on_validation(operator, work / heldout / "apply", heldout, methods, sizes.tasks,
                                              sizes.seeds, budgets[heldout], workers)

    for heldout, operator in operators.items():
        tasks = get_family(heldout).tasks("train", sizes.tasks, start=validation_start(heldout))
        stage(f"[4/5] references of {heldout}'s {len(tasks)} validation tasks -> {runs_file}")
        run_references(tasks, sizes.reference_seeds, LONG_RUN * budgets[heldout], operator, workers, runs_file)
        write_table([t.name for t in tasks], sizes.reference_seeds, runs_file,
                    TABLE if sizes.where is None else sizes.where / "references.csv")

    rows = [row for heldout, operator in operators.items()
            for row in heldout_rows(heldout, curves[heldout], operator, budgets[heldout], sizes, runs_file)]
    out = OUT if sizes.where is None else sizes.where / OUT.name
    write_rows(out, rows)
    for row in rows:
        print(", ".join(f"{k}: {v}" for k, v in row.items() if k != "source"))
    stage(f"[5/5] {len(rows)} rows -> {out}")


if __name__ == "__main__":
    main()
