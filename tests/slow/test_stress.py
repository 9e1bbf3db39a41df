"""Simulator stress: 1,000 tasks from the widest randomization ranges (and beyond), random and trained policies.

For every family in ``tasks/`` the widest range of each task parameter and physics exponent is the union
of its train and ood bands; "beyond" tasks double those exponent ranges in log space (a mass scale range
of 1.5^[-4, 4] becomes 1.5^[-8, 8], ×0.04 .. ×26). Tasks are split evenly over families, a third of
them beyond. Each task is rolled out for one full episode in 2 environments by each policy:

- ``random``: a fresh initialization (near-zero mean action, unit Gaussian action noise), every task;
- ``trained``: for each robot, PPO trained (20 updates) on train task 0 of the first family using that robot,
  rolled out on every task of that robot's families.

No exception may escape a rollout, and a rollout must return only finite values; unstable episodes (NaN or huge
state, MuJoCo's BADQACC) are ended by the simulator and counted, not raised. What ``benchmarks/stress.py``
measured for the ``stress`` rows of ``results/reliability.csv`` (those rows stay committed). About 13 minutes on a
shared 2-core machine; ``STRESS_TASKS`` and ``STRESS_PPO_UPDATES`` set smaller sizes for a quick look.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import pytest
import torch

from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import Collector
from metaimprove.sim.tasks import PhysicsRange, Range, Task, TaskFamily, load_families
from metaimprove.teachers import PPO, PPOConfig

TASKS = int(os.environ.get("STRESS_TASKS", "1000"))
"""tasks in all, round-robin over the families (the committed rows: 1,000)"""
PPO_UPDATES = int(os.environ.get("STRESS_PPO_UPDATES", "20"))
"""updates of the PPO run behind each robot's trained policy"""
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


def stress_tasks(n: int) -> list[tuple[int, str, Task]]:
    """``n`` tasks split evenly over the families, each with its seed (its index) and kind: a third of each
    family's "beyond" (stretch 2), the rest "widest"."""
    families = list(load_families().values())
    tasks = []
    for i in range(n):
        family = families[i % len(families)]
        kind = "beyond" if i % 3 == 2 else "widest"
        tasks.append((i, kind, widened(family, 2.0 if kind == "beyond" else 1.0).task("train", i)))
    return tasks


def random_policy(obs_dim: int, act_dim: int, seed: int) -> Policy:
    """A fresh initialization for the given sizes (near-zero mean action, unit Gaussian action noise)."""
    spec = PolicySpec(obs_dim, act_dim)
    return Policy(spec, init_params(spec, torch.Generator().manual_seed(seed)), ObsNormalizer.identity(obs_dim))


@functools.cache
def trained_policy(robot: str) -> tuple[Policy, float, float]:
    """PPO's policy after :data:`PPO_UPDATES` updates on train task 0 of the robot's first family, with the first
    and last batch mean returns."""
    family = next(f for f in load_families().values() if f.robot == robot)
    task = family.task("train", 0)
    collector = Collector(task, n_envs=1, seed=0)
    policy = random_policy(collector.sim.obs_dim, collector.sim.act_dim, 0)
    records = list(PPO(PPOConfig()).run(task, policy, PPO_UPDATES, seed=0))
    return records[-1].next_policy, records[0].mean_return, records[-1].mean_return


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(load_families()))
def test_widest_and_beyond_tasks_never_crash_and_stay_finite(family: str) -> None:
    torch.set_num_threads(1)
    spec = load_families()[family]
    trained, first, last = trained_policy(spec.robot)
    assert torch.isfinite(trained.theta).all() and math.isfinite(first) and math.isfinite(last), (first, last)
    rollouts: dict[str, int] = {}
    for seed, kind, task in stress_tasks(TASKS):
        if task.family != family:
            continue
        # Any exception escaping the env's construction or a rollout fails the test: that is a crash.
        collector = Collector(task, n_envs=N_ENVS, seed=seed)
        sizes = (collector.sim.obs_dim, collector.sim.act_dim)
        for name, policy in (("random", random_policy(*sizes, seed)), ("trained", trained)):
            exp = collector.collect(policy, spec.episode_length)
            for key in ("obs", "action", "reward", "log_prob"):
                assert torch.isfinite(getattr(exp, key)).all(), f"{name} policy on {task}: non-finite {key}"
            rollouts[f"{name}_{kind}"] = rollouts.get(f"{name}_{kind}", 0) + 1
    assert rollouts, f"no stress task of {family} among {TASKS}"
