"""Each task's normalization: its start return (score 0) and its reference return (score 1), cached under results/.

The start return of a task is the mean, over seeds 0 .. S-1, of ``apply``'s fresh starts' returns on it. Its
reference return is the best of the reference methods' mean returns after :data:`LONG_RUN` × B env steps from those
starts: ARS as the shipped operator's teacher runs it (the best ARS on validation) and PPO with the settings
``benchmarks/tune_ppo.py`` chose on validation (``teacher=ppo_tuned``). Returns are ``apply``'s deterministic
evaluation. Every long run is appended to ``results/references_runs.csv`` as it ends, so a rerun resumes; the
per-task table ``results/references.csv`` is rewritten from the runs once every run of the task list is there.

    python benchmarks/references.py [--test 16] [--ood 16] [--validation 8] [--seeds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

from common import (
    BUDGET,
    OPERATORS,
    REFERENCE_METHODS,
    REFERENCE_RUNS,
    REFERENCE_SEEDS,
    RESULTS,
    fresh_start_run,
    reference_table,
)

from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.sim.envs import AnyTask
from metaimprove.sim.tasks import get_family
from metaimprove.storage import atomic_write_csv
from metaimprove.teachers import Teacher, make_teacher, teacher_option

FAMILY = "halfcheetah_vel"
VALIDATION_START = 32
"""the first validation task: the shipped operator's collection holds train tasks 0-31"""
LONG_RUN = 8
"""a reference run's length in budgets B"""
METHODS = REFERENCE_METHODS
RUNS = REFERENCE_RUNS
TABLE = RESULTS / "references.csv"
RUN_FIELDS = ["task", "method", "seed", "env_steps", "start_return", "final_return"]
TABLE_FIELDS = ["task", "start", "reference", "reference_method", "seeds", "env_steps"]


def task_list(n_validation: int, n_test: int, n_ood: int) -> list[AnyTask]:
    """The tasks that need references: validation (train tasks outside the collection), test and ood."""
    family = get_family(FAMILY)
    return [*family.tasks("train", n_validation, start=VALIDATION_START), *family.tasks("test", n_test),
            *family.tasks("ood", n_ood)]


def reference_teacher(method: str, ckpt: OperatorCheckpoint) -> Teacher:
    """A fresh teacher of reference method ``method``."""
    return make_teacher(ckpt.teacher, "ars") if method == "ars" else teacher_option(method)


def long_run(task: AnyTask, method: str, seed: int, env_steps: int) -> dict[str, object]:
    """One reference run: ``method`` from run ``seed``'s fresh start on ``task`` for ``env_steps``."""
    _, ckpt = OperatorCheckpoint.load(OPERATORS / f"{FAMILY}.safetensors")
    start, final = fresh_start_run(reference_teacher(method, ckpt), ckpt, task, seed, env_steps)
    return {"task": task.name, "method": method, "seed": seed, "env_steps": env_steps, "start_return": start,
            "final_return": final}


def read_runs(env_steps: int) -> list[dict[str, str]]:
    """The reference runs ``results/references_runs.csv`` holds at ``env_steps``."""
    if not RUNS.exists():
        return []
    with RUNS.open() as f:
        return [r for r in csv.DictReader(f) if int(r["env_steps"]) == env_steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validation", type=int, default=8, help="validation tasks (train tasks 32, 33, ...)")
    parser.add_argument("--test", type=int, default=16, help="test tasks")
    parser.add_argument("--ood", type=int, default=16, help="ood tasks")
    parser.add_argument("--seeds", type=int, default=REFERENCE_SEEDS, help="seeds per task and method")
    parser.add_argument("--budget", type=int, default=BUDGET, help="B; reference runs are LONG_RUN × B long")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    env_steps = LONG_RUN * args.budget
    tasks = task_list(args.validation, args.test, args.ood)
    done = {(r["task"], r["method"], int(r["seed"])) for r in read_runs(env_steps)}
    jobs = [(task, method, seed, env_steps) for task in tasks for seed in range(args.seeds) for method in METHODS
            if (task.name, method, seed) not in done]
    print(f"{len(done)} reference runs done, {len(jobs)} to go", flush=True)
    new = not RUNS.exists()
    with RUNS.open("a", newline="") as f, ProcessPoolExecutor(args.workers, mp.get_context("spawn")) as pool:
        writer = csv.DictWriter(f, fieldnames=RUN_FIELDS)
        if new:
            writer.writeheader()
        for i, row in enumerate(pool.map(long_run, *zip(*jobs, strict=True)) if jobs else [], 1):
            writer.writerow(row)
            f.flush()
            print(f"{i}/{len(jobs)} {row['method']} {row['task']} s{row['seed']}: {row['start_return']:.1f} -> "
                  f"{row['final_return']:.1f}", flush=True)
    atomic_write_csv(TABLE, TABLE_FIELDS, reference_table([t.name for t in tasks], args.seeds))
    print(f"references of {len(tasks)} tasks -> {TABLE}")


if __name__ == "__main__":
    main()
