"""The Python API: a task, a pretrained operator, its improvement loop and apply's evaluation, from a script
(``import metaimprove as mi``; docs/python-api.md has an example).

Everything here is what ``metaimprove apply`` does for one (task, seed) of its ``operator`` method: the same start
θ⁰ (:meth:`Operator.initial_policy`), the same loop (:data:`~metaimprove.evaluation.methods.METHODS`'s
``operator`` entry) and the same evaluation episodes (:func:`evaluate`), so the numbers match apply's
``curves.csv``. The stages themselves (:func:`collect`, :func:`train`, :func:`apply`) take their config dataclasses,
the ones ``metaimprove <stage>`` fills from the command line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from metaimprove import seeds
from metaimprove.data.collect import CollectConfig, collect
from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.guard import Point
from metaimprove.evaluation.methods import METHODS, Run
from metaimprove.evaluation.protocol import ApplyConfig, run_budget
from metaimprove.operator.checkpoint import OperatorCheckpoint, resolve_operator, shipped_operators, warn_if_incomplete
from metaimprove.operator.networks import ImprovementOperator
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.sim import rollout
from metaimprove.sim.envs import AnyTask, UserEnv
from metaimprove.sim.policy import Policy
from metaimprove.sim.tasks import Task, TaskFamily, get_family
from metaimprove.training.train import TrainConfig, train

__all__ = ["ApplyConfig", "CollectConfig", "Operator", "Policy", "Task", "TaskFamily", "TaskOrEnv", "TrainConfig",
           "UserEnv", "apply", "collect", "evaluate", "get_family", "make_task", "resolve_task", "shipped_operators",
           "train"]

TaskOrEnv = Task | UserEnv | str
"""where a policy runs: a family's :class:`Task`, a :class:`UserEnv`, or a gymnasium env id (``Hopper-v5``,
``metaimprove/HalfCheetahVel-v0``) or ``module:Class`` string"""


def make_task(family: str, split: str = "train", index: int = 0) -> Task:
    """The ``index``-th task of ``family``'s ``split`` (``train``, ``test`` or ``ood``), as every stage draws it."""
    return get_family(family).task(split, index)


def resolve_task(task_or_env: TaskOrEnv) -> AnyTask:
    """A :class:`Task` or :class:`UserEnv` as given; a string as the user env it names (:meth:`UserEnv.resolve`,
    its episodes as long as the id's ``max_episode_steps``)."""
    if isinstance(task_or_env, Task | UserEnv):
        return task_or_env
    if isinstance(task_or_env, str):
        return UserEnv.resolve(task_or_env)
    raise UserError(f"expected a Task, a UserEnv or a gymnasium env id, got {type(task_or_env).__name__}")


def evaluate(policy: Policy, task_or_env: TaskOrEnv, episodes: int = 8, seed: int = 0) -> float:
    """Mean return of ``policy``'s deterministic mean action over ``episodes`` episodes: apply's protocol, the
    episodes on which apply scores its run ``seed`` (:func:`metaimprove.sim.rollout.evaluate`)."""
    if episodes < 1:
        raise UserError(f"episodes must be >= 1, got {episodes}")
    return rollout.evaluate(policy, resolve_task(task_or_env), episodes, seed=seeds.evaluation(seed))


@dataclass(frozen=True)
class Operator:
    """A trained improvement operator f(θ, τ, ask) → θ' with its checkpoint; make one with :meth:`from_pretrained`."""

    network: ImprovementOperator
    """the operator's network (eval mode)"""
    checkpoint: OperatorCheckpoint
    """what it improves (``checkpoint.spec``), how it collects (its teacher) and what it was trained on"""
    path: Path
    """the checkpoint file it was read from"""

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str]) -> Operator:
        """Read an operator: a checkpoint file (``.safetensors`` with its ``.json``) or the name of a shipped one
        (``halfcheetah_vel``; :func:`~metaimprove.operator.checkpoint.shipped_operators` lists them). An existing
        file wins over a name; neither is a one-line :class:`~metaimprove.errors.UserError` naming the shipped ones."""
        path = resolve_operator(name_or_path)
        warn_if_incomplete(path)
        network, checkpoint = OperatorCheckpoint.load(path)
        return cls(network, checkpoint, path)

    @property
    def batch(self) -> int:
        """Env steps of one of its full-width batches (warm-up batches are narrower)."""
        return BatchSchedule.of(self.checkpoint).batch

    def initial_policy(self, seed: int = 0, task_or_env: TaskOrEnv | None = None) -> Policy:
        """The fresh θ⁰ apply starts its run ``seed`` from (``start=fresh``): an initialization no collection used.
        A shape-agnostic operator's is of ``task_or_env``'s observation and action sizes when given (with the hidden
        sizes of the spec it was built for)."""
        ckpt = self.checkpoint if task_or_env is None else self.checkpoint.on(resolve_task(task_or_env))
        return ckpt.fresh_policy(seed)

    def improve(self, policy: Policy, task_or_env: TaskOrEnv, budget: int, seed: int = 0,
                ask_k: int | None = None) -> Iterator[tuple[int, Policy]]:
        """Improve ``policy`` on ``task_or_env``: θ ← f(θ, τ, ask) once per batch it collects, while the next batch
        fits in ``budget`` env steps. Yields ``(env steps used so far, policy)`` after each application.

        This is apply's ``operator`` method for run ``seed`` (its collection and feature seeds), run lazily: stop
        iterating whenever you like. ``ask_k`` is apply's setting of that name. An operator with memory
        (``operator.memory``) carries its state from one application to the next within this iterator; another call
        starts a new run, from h₀. The policy must be of the operator's spec (a shape-agnostic operator's: of any
        hidden sizes, with the env's observation and action sizes), and the env's spaces must fit it (one-line errors
        otherwise).
        """
        task = resolve_task(task_or_env)
        ckpt = self.checkpoint.on(task)  # a shape-agnostic operator serves the env's observation and action sizes
        ckpt.check_policy(policy.spec, "the policy", task.name)
        dims = rollout.simulator(task, 1, 0)
        if (dims.obs_dim, dims.act_dim) != (ckpt.spec.obs_dim, ckpt.spec.act_dim):
            raise UserError(f"{task.name} has obs ({dims.obs_dim},) / act ({dims.act_dim},) but this operator "
                            f"improves obs {ckpt.spec.obs_dim} / act {ckpt.spec.act_dim}")
        ckpt.check_task(task)
        config = ApplyConfig(operator_path=str(self.path), out="", budget=budget, ask_k=ask_k, methods=["operator"],
                             seeds=1)
        schedule = BatchSchedule.of(ckpt, config.warmup)
        run = Run(config, self.network, ckpt, task, seed, schedule, run_budget(config, schedule.batch))
        points = METHODS["operator"].points
        assert points is not None
        # Checked above, before the first step; the steps themselves run as the caller iterates.
        return ((point.steps, point.policy) for point in points(run, Point(0, policy)))
