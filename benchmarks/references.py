"""Each task's normalization: its start return (score 0) and its reference return (score 1), cached under results/.

The start return of a task is the mean, over seeds 0 .. S-1, of ``apply``'s fresh starts' returns on it. Its
reference return is the best of the reference methods' mean returns after :data:`LONG_RUN` × B env steps from those
starts: ARS as the shipped operator's teacher runs it (the best ARS on validation) and PPO with the settings
``benchmarks/tune_ppo.py`` chose on validation (``teacher=ppo_tuned``). Returns are ``apply``'s deterministic
evaluation. Every long run is appended to ``results/references_runs.csv`` as it ends, so a rerun resumes; the
per-task table ``results/references.csv`` gets the task list's rows (in place of their old ones) from the runs once
every run of the list is there.

Tasks of another family (``--family``) start from its shipped operator's fresh starts, its ARS is that operator's
teacher and B its held-out budget (:func:`~common.family_budget`); its validation tasks are the train tasks after
its shipped collection.

    python benchmarks/references.py [--family halfcheetah_vel] [--test 16] [--ood 16] [--validation 8] [--seeds 3] \
        [--workers 2]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

from common import (
    OPERATORS,
    REFERENCE_METHODS,
    REFERENCE_RUNS,
    REFERENCE_SEEDS,
    RESULTS,
    family_budget,
    fresh_start_run,
    reference_table,
    validation_start,
)

from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.sim.envs import AnyTask
from metaimprove.sim.tasks import get_family, load_families
from metaimprove.storage import atomic_write_csv
from metaimprove.teachers import Teacher, make_teacher, teacher_option

FAMILY = "halfcheetah_vel"
"""the family of the shipped operator the benchmarks measure, references.py's default"""
LONG_RUN = 8
"""a reference run's length in budgets B"""
METHODS = REFERENCE_METHODS
RUNS = REFERENCE_RUNS
TABLE = RESULTS / "references.csv"
RUN_FIELDS = ["task", "method", "seed", "env_steps", "start_return", "final_return"]
TABLE_FIELDS = ["task", "start", "reference", "reference_method", "seeds", "env_steps"]


def task_list(n_validation: int, n_test: int, n_ood: int, family: str = FAMILY,
              first_validation: int | None = None) -> list[AnyTask]:
    """The tasks of ``family`` that need references: validation (train tasks from ``first_validation``, default
    :func:`~common.validation_start`, outside every collection), test and ood."""
    tasks = get_family(family)
    start = validation_start(family) if first_validation is None else first_validation
    return [*tasks.tasks("train", n_validation, start=start), *tasks.tasks("test", n_test), *tasks.tasks("ood", n_ood)]


def reference_teacher(method: str, ckpt: OperatorCheckpoint) -> Teacher:
    """A fresh teacher of reference method ``method``."""
    return make_teacher(ckpt.teacher, "ars") if method == "ars" else teacher_option(method)


def long_run(task: AnyTask, method: str, seed: int, env_steps: int, operator: Path) -> dict[str, object]:
    """One reference run: ``method`` from run ``seed``'s fresh start of ``operator`` on ``task`` for ``env_steps``
    (ARS as ``operator``'s teacher)."""
    _, ckpt = OperatorCheckpoint.load(operator)
    start, final = fresh_start_run(reference_teacher(method, ckpt), ckpt, task, seed, env_steps)
    return {"task": task.name, "method": method, "seed": seed, "env_steps": env_steps, "start_return": start,
            "final_return": final}


def read_runs(env_steps: int, runs_file: Path = RUNS) -> list[dict[str, str]]:
    """The reference runs ``runs_file`` holds at ``env_steps``."""
    if not runs_file.exists():
        return []
    with runs_file.open() as f:
        return [r for r in csv.DictReader(f) if int(r["env_steps"]) == env_steps]


def run_references(tasks: list[AnyTask], n_seeds: int, env_steps: int, operator: Path, workers: int,
                   runs_file: Path = RUNS) -> None:
    """Every long run of ``tasks`` × seeds 0 .. n_seeds - 1 × :data:`METHODS` from ``operator``'s fresh starts that
    ``runs_file`` lacks, each appended to it as it ends (so a rerun resumes)."""
    done = {(r["task"], r["method"], int(r["seed"])) for r in read_runs(env_steps, runs_file)}
    jobs = [(task, method, seed, env_steps, operator) for task in tasks for seed in range(n_seeds)
            for method in METHODS if (task.name, method, seed) not in done]
    print(f"{len(done)} reference runs done, {len(jobs)} to go", flush=True)
    new = not runs_file.exists()
    # One worker runs in this process: no process of its own to start.
    pool = ProcessPoolExecutor(workers, mp.get_context("spawn")) if workers > 1 and jobs else nullcontext(None)
    with runs_file.open("a", newline="") as f, pool as executor:
        writer = csv.DictWriter(f, fieldnames=RUN_FIELDS)
        if new:
            writer.writeheader()
        run_all = map if executor is None else executor.map
        for i, row in enumerate(run_all(long_run, *zip(*jobs, strict=True)) if jobs else [], 1):
            writer.writerow(row)
            f.flush()
            print(f"{i}/{len(jobs)} {row['method']} {row['task']} s{row['seed']}: {row['start_return']:.1f} -> "
                  f"{row['final_return']:.1f}", flush=True)


def write_table(tasks: list[str], n_seeds: int, runs_file: Path = RUNS, table: Path = TABLE) -> None:
    """Put the reference rows of ``tasks`` (:func:`~common.reference_table` of ``runs_file``) into ``table``, in place
    of their old rows; the rows of other tasks stay where they are."""
    rows = {str(r["task"]): r for r in reference_table(tasks, n_seeds, runs_file)}
    kept: list[dict[str, object]] = []
    if table.exists():
        with table.open() as f:
            kept = list(csv.DictReader(f))
    merged = [rows.pop(str(r["task"]), r) for r in kept]
    atomic_write_csv(table, TABLE_FIELDS, [*merged, *rows.values()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default=FAMILY, choices=sorted(load_families()),
                        help="the task family (its shipped operator gives the fresh starts and the ARS teacher)")
    parser.add_argument("--validation", type=int, default=8,
                        help="validation tasks (train tasks from the first one outside the family's shipped "
                             "collection: 32, 33, ... for halfcheetah_vel)")
    parser.add_argument("--test", type=int, default=16, help="test tasks")
    parser.add_argument("--ood", type=int, default=16, help="ood tasks")
    parser.add_argument("--seeds", type=int, default=REFERENCE_SEEDS, help="seeds per task and method")
    parser.add_argument("--budget", type=int, help="B (default: the family's held-out budget, 61440 for "
                        "halfcheetah_vel); reference runs are LONG_RUN × B long")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    tasks = task_list(args.validation, args.test, args.ood, args.family)
    budget = family_budget(args.family) if args.budget is None else args.budget
    run_references(tasks, args.seeds, LONG_RUN * budget, OPERATORS / f"{args.family}.safetensors", args.workers)
    write_table([t.name for t in tasks], args.seeds)
    print(f"references of {len(tasks)} tasks -> {TABLE}")


if __name__ == "__main__":
    main()
