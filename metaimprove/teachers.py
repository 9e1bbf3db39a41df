"""Teachers: the trusted baseline improvers we learn from and compare against (PPO first, ARS second).

A teacher improves a policy from the experience it just collected, ``improve(τ) -> θ'``, and
:meth:`Teacher.run` turns that into a stream of :class:`ImprovementRecord` — one per update,
``(θⁿ, τⁿ, task) → θⁿ⁺¹`` — which :mod:`metaimprove.collect` writes to disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from metaimprove.policy import ObsNormalizer, Policy
from metaimprove.rollout import Experience
from metaimprove.tasks import Task


@dataclass
class PPOConfig:
    """PPO hyperparameters (defaults follow SB3's MuJoCo settings with 8 envs × 256 steps)."""

    n_envs: int = 8
    """environments per batch; n_envs × n_steps env steps per update"""
    n_steps: int = 256
    """steps per environment per update (one whole episode at the default episode length)"""
    lr: float = 3e-4
    """Adam learning rate of policy and value function"""
    n_epochs: int = 10
    """passes over each batch"""
    minibatch_size: int = 64
    """transitions per gradient step"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """GAE λ"""
    clip_range: float = 0.2
    """PPO ratio clipping ε"""
    ent_coef: float = 0.0
    """entropy bonus weight"""
    vf_coef: float = 0.5
    """value-loss weight"""
    max_grad_norm: float = 0.5
    """global gradient-norm clip"""
    value_hidden: tuple[int, ...] = (64, 64)
    """hidden sizes of the (separate) value network"""
    normalize_advantage: bool = True
    """standardize advantages per minibatch"""


@dataclass
class ImprovementRecord:
    """One teacher update on one task: θⁿ collected τⁿ, and the teacher turned it into θⁿ⁺¹."""

    task: Task
    iteration: int
    """n, counted from 0"""
    policy: Policy
    """θⁿ with the normalizer it collected τⁿ with"""
    experience: Experience
    """τⁿ"""
    next_policy: Policy
    """θⁿ⁺¹ with its (updated) normalizer"""
    mean_return: float
    """mean return of τⁿ's completed episodes"""
    env_steps: int
    """environment steps used so far, τⁿ included"""


class Teacher:
    """Base of the teachers: ``start`` on a task from a policy, then ``improve`` from each batch."""

    name: str = "teacher"

    @property
    def steps_per_update(self) -> int:
        """Environment steps collected per update."""
        raise NotImplementedError

    def start(self, task: Task, policy: Policy, seed: int) -> None:
        """Begin a run on ``task`` from ``policy`` (copied); resets all teacher state (value net, optimizer)."""
        raise NotImplementedError

    def collect(self) -> Experience:
        """Collect one batch with the current policy."""
        raise NotImplementedError

    def improve(self, experience: Experience) -> Policy:
        """Update the current policy from ``experience`` (collected by it); returns the new policy."""
        raise NotImplementedError

    @property
    def policy(self) -> Policy:
        """The current policy."""
        raise NotImplementedError

    def run(self, task: Task, policy: Policy, iterations: int, seed: int) -> Iterator[ImprovementRecord]:
        """``iterations`` updates from ``policy`` on ``task``, yielding one record per update."""
        self.start(task, policy, seed)
        steps = 0
        for n in range(iterations):
            before = _snapshot(self.policy)
            exp = self.collect()
            steps += exp.n_steps
            after = _snapshot(self.improve(exp))
            yield ImprovementRecord(task, n, before, exp, after, exp.mean_return, steps)


def _snapshot(policy: Policy) -> Policy:
    return Policy(policy.spec, policy.theta.detach().clone(), policy.normalizer.copy())


class PPO(Teacher):
    """Proximal Policy Optimization on the batched collector (to be implemented)."""

    name = "ppo"

    def __init__(self, config: PPOConfig) -> None:
        raise NotImplementedError("PPO is being written")


__all__ = ["PPO", "ImprovementRecord", "ObsNormalizer", "PPOConfig", "Teacher"]
