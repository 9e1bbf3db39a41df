"""Simulator stress: 1,000 tasks from the widest randomization ranges (and beyond), random and trained policies.

For every family in ``tasks/`` the widest range of each task parameter and physics exponent is the union
of its train and ood bands; "beyond" tasks double those exponent ranges in log space (a mass scale range
of 1.5^[-4, 4] becomes 1.5^[-8, 8], ×0.04 .. ×26). Tasks are split evenly over families, a third of
them beyond. Each task is rolled out for one full episode in 2 environments by each policy:

- ``random``: a fresh initialization (near-zero mean action, unit Gaussian action noise), every task;
- ``trained``: for each robot, PPO trained (``--ppo-updates`` updates) on train task 0 of the first family
  using that robot, rolled out on every task of that robot's families.

A crash is any exception escaping a rollout; a rollout must also return only finite values. Unstable
episodes (NaN or huge state, MuJoCo's BADQACC) are ended by the simulator and counted. Appends rows to
``results/reliability.csv``::

    python benchmarks/stress.py [--tasks 1000] [--ppo-updates 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import traceback

import torch
from kill_resume import write_rows

from metaimprove.sim.envs import mujoco_log
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import Collector, Experience
from metaimprove.sim.tasks import PhysicsRange, Range, Task, TaskFamily, load_families
from metaimprove.teachers import PPO, PPOConfig

N_ENVS = 2


def _widest(spec: Range, stretch: float) -> Range:
    """One uniform band covering ``spec``'s train and ood bands, its width scaled by ``stretch`` about its centre."""
    if spec.choices:
        return spec
    bands = [b for b in (spec.train, *spec.ood) if b is not None]
    lo, hi = min(b[0] for b in bands), max(b[1] for b in bands)
    mid, half = (lo + hi) / 2, stretch * (hi - lo) / 2
    return Range(train=(mid - half, mid + half))


def widened(family: TaskFamily, stretch: float) -> TaskFamily:
    """``family`` with every range at its widest (train ∪ ood), physics exponent ranges stretched by ``stretch``."""
    physics = {k: PhysicsRange(p.base, _widest(p.exponent, stretch)) for k, p in family.physics.items()}
    params = {k: _widest(r, 1.0) for k, r in family.params.items()}
    return dataclasses.replace(family, params=params, physics=physics)


def stress_tasks(n: int) -> list[tuple[str, Task]]:
    """``n`` tasks split evenly over the families; a third of each family's "beyond" (stretch 2)."""
    families = list(load_families().values())
    tasks = []
    for i in range(n):
        family = families[i % len(families)]
        kind = "beyond" if i % 3 == 2 else "widest"
        tasks.append((kind, widened(family, 2.0 if kind == "beyond" else 1.0).task("train", i)))
    return tasks


def trained_policies(updates: int) -> dict[str, tuple[Policy, float, float]]:
    """Per robot: PPO's policy after ``updates`` updates on train task 0 of the robot's first family, with the
    first and last batch mean returns."""
    trained: dict[str, tuple[Policy, float, float]] = {}
    for family in load_families().values():
        if family.robot in trained:
            continue
        task = family.task("train", 0)
        collector = Collector(task, n_envs=1, seed=0)
        policy = random_policy(collector.sim.obs_dim, collector.sim.act_dim, 0)
        records = list(PPO(PPOConfig()).run(task, policy, updates, seed=0))
        trained[family.robot] = (records[-1].next_policy, records[0].mean_return, records[-1].mean_return)
    return trained


def rollout(policy: Policy, collector: Collector, task: Task) -> Experience:
    """One full episode of ``policy`` in the collector's environments of ``task``."""
    return collector.collect(policy, load_families()[task.family].episode_length)


def random_policy(obs_dim: int, act_dim: int, seed: int) -> Policy:
    """A fresh initialization for the given sizes (near-zero mean action, unit Gaussian action noise)."""
    spec = PolicySpec(obs_dim, act_dim)
    return Policy(spec, init_params(spec, torch.Generator().manual_seed(seed)), ObsNormalizer.identity(obs_dim))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--ppo-updates", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    begin = time.perf_counter()
    families = load_families()
    with mujoco_log(None):
        trained = trained_policies(args.ppo_updates)
        counts: dict[str, int] = {}
        first_crash = ""
        for seed, (kind, task) in enumerate(stress_tasks(args.tasks)):
            try:
                collector = Collector(task, n_envs=N_ENVS, seed=seed)
                sizes = (collector.sim.obs_dim, collector.sim.act_dim)
            except Exception:
                counts["crashes"] = counts.get("crashes", 0) + 1
                first_crash = first_crash or traceback.format_exc().strip().splitlines()[-1]
                continue
            policies = {"random": random_policy(*sizes, seed), "trained": trained[families[task.family].robot][0]}
            for name, policy in policies.items():
                key = f"{name}_{kind}"
                counts[f"rollouts_{key}"] = counts.get(f"rollouts_{key}", 0) + 1
                try:
                    exp = rollout(policy, collector, task)
                except Exception:
                    counts["crashes"] = counts.get("crashes", 0) + 1
                    first_crash = first_crash or traceback.format_exc().strip().splitlines()[-1]
                    continue
                finite = all(torch.isfinite(t).all() for t in (exp.obs, exp.action, exp.reward, exp.log_prob))
                counts["non_finite_rollouts"] = counts.get("non_finite_rollouts", 0) + int(not finite)
                counts[f"unstable_episodes_{key}"] = counts.get(f"unstable_episodes_{key}", 0) + exp.n_unstable
    seconds = time.perf_counter() - begin
    note = (f"{args.tasks} tasks (round-robin over {', '.join(load_families())}; 2/3 widest train∪ood ranges, "
            f"1/3 physics exponent ranges ×2), 1 episode × {N_ENVS} envs per policy")
    figures: dict[str, tuple[object, str]] = {
        "tasks": (args.tasks, note),
        "crashes": (counts.pop("crashes", 0), first_crash or "exceptions escaping a rollout"),
        "non_finite_rollouts": (counts.pop("non_finite_rollouts", 0), "rollouts returning NaN/inf"),
        **{name: (value, "") for name, value in sorted(counts.items())},
        **{f"trained_{robot}_return_first_last": (f"{first:.1f}->{last:.1f}",
                                                  f"PPO {args.ppo_updates} updates (batch mean returns)")
           for robot, (_, first, last) in trained.items()},
        "wall_s": (round(seconds, 1), "shared 2-core machine"),
    }
    write_rows("stress", figures)
    for name, (value, detail) in figures.items():
        print(f"{name}: {value}" + (f"  ({detail})" if detail else ""))


if __name__ == "__main__":
    main()
