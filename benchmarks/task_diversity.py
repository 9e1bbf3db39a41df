"""Do the tasks really differ? Train PPO on K tasks of a family, evaluate every final policy on every task.

If a policy trained on one task did as well on the others as their own specialists, the task distribution
would hold one task in disguise and there would be nothing for an improvement operator to adapt to. For each
family this trains our PPO teacher on K train tasks (``seeds`` runs each, from the same initial θ per seed),
evaluates each final policy on all K tasks with :func:`metaimprove.sim.rollout.evaluate` (deterministic mean
action, fixed episodes and initial states), and reports:

- ``own``: mean return of each policy on the task it was trained on (the diagonal);
- ``other``: mean return of policies on tasks they were not trained on (off the diagonal);
- ``gap`` = own − other, in return units, and ``ratio`` = other / own (halfcheetah_vel's returns are
  negative, so there a ratio above 1 means worse elsewhere; halfcheetah_rand_params's are positive);
- ``transfer`` = Σ_{i≠j} (R_ij − R0_j) / Σ_{i≠j} (R_jj − R0_j): the fraction of the specialists'
  improvement over the untrained policy (R0) that policies trained on other tasks achieve: 1 means the
  tasks are interchangeable, 0 means training elsewhere is worth nothing (a ratio of sums, because on a
  task with a small target velocity the untrained policy, standing still, is already close to its specialist);
- ``own_best``: fraction of tasks on which their own specialist is the best of the K policies.

Writes ``results/task_diversity.csv`` with ``kind=matrix`` rows (family, trained_on, evaluated_on, seed,
return; ``trained_on=untrained`` is the initial policy) and ``kind=summary`` rows (name, value).

Usage::

    python benchmarks/task_diversity.py           # 6 vel + 4 rand_params tasks, 2 seeds, 60 updates, ~6 min
    python benchmarks/task_diversity.py --quick   # 3 vel tasks, 1 seed, 15 updates, <1 min, to a temp dir
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
HIDDEN = (32, 32)
EVAL_EPISODES = 8
EVAL_SEED = 10_000


@dataclass(frozen=True)
class Job:
    """Train on one task from one seed (``iterations=0``: the untrained policy) and evaluate on ``eval_tasks``."""

    family: str
    task_index: int
    seed: int
    iterations: int
    eval_tasks: tuple[int, ...]


@dataclass
class JobResult:
    """Returns of the job's final policy on each evaluation task."""

    job: Job
    returns: dict[int, float]
    train_return: float
    wall_s: float


def _worker_init(workdir: str) -> None:
    import torch

    from metaimprove.sim.envs import route_mujoco_warnings

    torch.set_num_threads(1)  # tiny networks: more threads only add synchronization
    route_mujoco_warnings(Path(workdir))


def run_job(job: Job) -> JobResult:
    """Train (unless ``iterations == 0``) and evaluate on every task of ``eval_tasks``."""
    import torch

    from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
    from metaimprove.sim.rollout import Simulator, evaluate
    from metaimprove.sim.tasks import get_family
    from metaimprove.teachers import PPO, PPOConfig

    start = time.perf_counter()
    family = get_family(job.family)
    # The untrained job (task_index -1) trains nowhere; any task of the family gives the shapes.
    task = family.task("train", job.task_index if job.iterations else job.eval_tasks[0])
    sim = Simulator(task, 1, job.seed)
    spec = PolicySpec(sim.obs_dim, sim.act_dim, HIDDEN)
    policy = Policy(spec, init_params(spec, torch.Generator().manual_seed(job.seed)),
                    ObsNormalizer.identity(sim.obs_dim))
    train_return = float("nan")
    if job.iterations:
        records = list(PPO(PPOConfig()).run(task, policy, job.iterations, job.seed))
        policy = records[-1].next_policy
        train_return = float(np.mean([r.mean_return for r in records[-3:]]))
    returns = {j: evaluate(policy, family.task("train", j), n_episodes=EVAL_EPISODES, seed=EVAL_SEED)
               for j in job.eval_tasks}
    return JobResult(job, returns, train_return, time.perf_counter() - start)


def matrix(results: list[JobResult], family: str, tasks: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Seed-averaged cross-task returns ``R[i, j]`` (trained on i, evaluated on j) and untrained ``R0[j]``."""
    trained = [r for r in results if r.job.family == family and r.job.iterations]
    untrained = [r for r in results if r.job.family == family and not r.job.iterations]
    r = np.array([[np.mean([x.returns[j] for x in trained if x.job.task_index == i]) for j in tasks] for i in tasks])
    r0 = np.array([np.mean([x.returns[j] for x in untrained]) for j in tasks])
    return r, r0


def summarize(r: np.ndarray, r0: np.ndarray) -> dict[str, float]:
    """own, other, gap, transfer and own_best of one family's matrix (see the module docstring)."""
    k = len(r)
    off = ~np.eye(k, dtype=bool)
    own, other = float(np.diag(r).mean()), float(r[off].mean())
    transfer = (r - r0[None, :])[off].sum() / np.broadcast_to(np.diag(r) - r0, (k, k))[off].sum()
    return {
        "own_task_return": own,
        "other_task_return": other,
        "gap_own_minus_other": own - other,
        "ratio_other_over_own": other / own,
        "transfer_ratio": float(transfer),
        "own_best_fraction": float(np.mean(np.argmax(r, axis=0) == np.arange(k))),
        "untrained_return": float(r0.mean()),
    }


def main() -> None:
    """Train, evaluate across tasks, print the matrices and ``name: value`` lines, write the CSV."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 vel tasks, 1 seed, 15 updates (<1 min)")
    parser.add_argument("--vel-tasks", type=int, default=6, help="halfcheetah_vel train tasks 0..K-1")
    parser.add_argument("--rand-params-tasks", type=int, default=4, help="halfcheetah_rand_params tasks (0: none)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=60, help="PPO updates per run (2048 env steps each)")
    parser.add_argument("--workers", type=int, default=2, help="processes (the machine has 2 cores)")
    parser.add_argument("--out", type=Path, help="CSV path (default results/task_diversity.csv; quick: a temp dir)")
    args = parser.parse_args()
    if args.quick:
        args.vel_tasks, args.rand_params_tasks, args.seeds, args.iterations = 3, 0, 1, 15
    out = args.out or (Path(tempfile.mkdtemp(prefix="task_diversity_")) / "task_diversity.csv" if args.quick
                       else REPO / "results" / "task_diversity.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    families = {"halfcheetah_vel": list(range(args.vel_tasks))}
    if args.rand_params_tasks:
        families["halfcheetah_rand_params"] = list(range(args.rand_params_tasks))
    jobs = []
    for fam, tasks in families.items():
        for s in range(args.seeds):
            jobs += [Job(fam, i, s, args.iterations, tuple(tasks)) for i in tasks]
            jobs.append(Job(fam, -1, s, 0, tuple(tasks)))
    workdir = tempfile.mkdtemp(prefix="task_diversity_work_")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    start = time.perf_counter()
    results: list[JobResult] = []
    with mp.get_context("spawn").Pool(args.workers, initializer=_worker_init, initargs=(workdir,)) as pool:
        for res in pool.imap_unordered(run_job, jobs):
            results.append(res)
            what = "untrained" if not res.job.iterations else f"task {res.job.task_index}"
            print(f"# {res.job.family} {what} seed {res.job.seed}: {res.wall_s:.0f}s ({len(results)}/{len(jobs)})",
                  flush=True)

    lines: list[tuple[str, str]] = [("wall_minutes", f"{(time.perf_counter() - start) / 60:.1f}"),
                                    ("seeds", str(args.seeds)), ("updates_per_run", str(args.iterations)),
                                    ("eval_episodes", str(EVAL_EPISODES))]
    rows = []
    for fam, tasks in families.items():
        for res in (r for r in results if r.job.family == fam):
            trained_on = f"{fam}/train/{res.job.task_index}" if res.job.iterations else "untrained"
            rows += [{"kind": "matrix", "family": fam, "trained_on": trained_on, "evaluated_on": f"{fam}/train/{j}",
                      "seed": res.job.seed, "return": f"{ret:.3f}"} for j, ret in res.returns.items()]
        r, r0 = matrix(results, fam, tasks)
        print(f"# {fam}: mean return over {args.seeds} seed(s); row = trained on, column = evaluated on")
        print("#            " + " ".join(f"{f'task {j}':>9}" for j in tasks))
        for i, row in zip(tasks, r, strict=True):
            print(f"# task {i:<5} " + " ".join(f"{x:9.1f}" for x in row))
        print("# untrained  " + " ".join(f"{x:9.1f}" for x in r0))
        lines += [(f"{fam}_{name}", f"{value:.3f}") for name, value in summarize(r, r0).items()]
    vel = summarize(*matrix(results, "halfcheetah_vel", families["halfcheetah_vel"]))
    lines.append(("transfer_ratio_halfcheetah_vel", f"{vel['transfer_ratio']:.3f}"))
    rows += [{"kind": "summary", "name": name, "value": value} for name, value in lines]
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, ["kind", "family", "trained_on", "evaluated_on", "seed", "return", "name", "value"])
        w.writeheader()
        w.writerows(rows)
    print(f"# wrote {out}; worker logs in {workdir}")
    for name, value in lines:
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
