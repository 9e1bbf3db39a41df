"""The policy spec, batch sizes and runs that the teacher tests share."""

from __future__ import annotations

import torch

from metaimprove.sim.envs import default_task
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.teachers import PPO, ARSConfig, ImprovementRecord, PPOConfig

SPEC = PolicySpec(obs_dim=17, act_dim=6, hidden=(32, 32))


# Short batches (episodes cut at the batch end and bootstrapped) keep the bookkeeping tests fast.
SMALL = PPOConfig(n_envs=4, n_steps=64, n_epochs=2, minibatch_size=64)


# ARS: 3 directions (6 envs) × 32 steps keeps the bookkeeping tests fast.
ARS_SMALL = ARSConfig(n_directions=3, top_b=2, n_steps=32)


def fresh_policy(seed: int = 0) -> Policy:
    return Policy(SPEC, init_params(SPEC, torch.Generator().manual_seed(seed)), ObsNormalizer.identity(SPEC.obs_dim))


def run(config: PPOConfig, seed: int, iterations: int,
        target_velocity: float = 1.0) -> tuple[PPO, list[ImprovementRecord]]:
    ppo = PPO(config)
    task = default_task("halfcheetah_vel", target_velocity=target_velocity)
    return ppo, list(ppo.run(task, fresh_policy(), iterations, seed))
