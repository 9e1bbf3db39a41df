"""The teacher interface: improve a policy from the experience it just collected, ``improve(τ) -> θ'``, and
:meth:`Teacher.run` as a stream of :class:`ImprovementRecord` pairs ``(θⁿ, τⁿ, task) → θⁿ⁺¹``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from metaimprove.errors import UserError
from metaimprove.sim.envs import AnyTask
from metaimprove.sim.policy import Policy
from metaimprove.sim.rollout import Collector, Experience
from metaimprove.sim.tasks import Task


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
    stats: dict[str, float] = field(default_factory=dict)
    """the teacher's diagnostics of this update (:attr:`Teacher.last_stats`), for the logs"""


class Teacher:
    """Base of the teachers: ``start`` on a task from a policy, then ``improve`` from each batch."""

    name: str = "teacher"
    last_stats: Mapping[str, float] = MappingProxyType({})
    """diagnostics of the last update (PPO: approx_kl, clip_fraction, explained_variance, std; ARS: return_std,
    step_size, step_norm); a teacher without any leaves it empty"""

    @property
    def batch_shape(self) -> tuple[int, int]:
        """``(envs, steps per env)`` of the batch collected per update."""
        raise NotImplementedError

    @property
    def steps_per_update(self) -> int:
        """Environment steps collected per update."""
        n_envs, n_steps = self.batch_shape
        return n_envs * n_steps

    def resized(self, n_envs: int) -> Teacher:
        """A fresh teacher of this kind and config whose batches hold ``n_envs`` environments (an operator that
        reads fewer of them than its teacher ran collects such batches)."""
        raise NotImplementedError

    def start(self, task: AnyTask, policy: Policy, seed: int) -> None:
        """Begin a run on ``task`` from ``policy`` (copied); resets all teacher state (value net, optimizer)."""
        raise NotImplementedError

    def collect(self) -> Experience:
        """Collect one batch with the current policy."""
        return self.explore(self.policy)

    def explore(self, policy: Policy) -> Experience:
        """Collect one batch of this teacher's kind from ``policy`` (not necessarily the teacher's own) on the
        task of :meth:`start`, drawing on the teacher's collector and noise: what an improvement operator trained
        on this teacher's pairs must see."""
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
            yield ImprovementRecord(task, n, before, exp, after, exp.mean_return, steps, dict(self.last_stats))


def _snapshot(policy: Policy) -> Policy:
    return Policy(policy.spec, policy.theta.detach().clone(), policy.normalizer.copy())


def check_policy(policy: Policy, collector: Collector, teacher: str) -> None:
    """Refuse a policy whose shapes do not fit the collector's task, or a batch of θs (one line each)."""
    spec, sim = policy.spec, collector.sim
    if (spec.obs_dim, spec.act_dim) != (sim.obs_dim, sim.act_dim):
        raise UserError(f"policy has obs/act dims {spec.obs_dim}/{spec.act_dim} but task {sim.task.name} "
                        f"needs {sim.obs_dim}/{sim.act_dim}")
    if spec.squash:
        raise UserError(f"{teacher.upper()} improves Gaussian policies; this one squashes its actions (an SAC actor)")
    if policy.theta.shape != (spec.n_params,):
        raise UserError(f"{teacher.upper()} improves one policy: θ must have shape ({spec.n_params},), "
                        f"got {tuple(policy.theta.shape)}")


