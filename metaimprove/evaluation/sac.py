"""The ``sac`` method of ``apply``: stable-baselines3's SAC, what a user counting env steps picks first, on the run's
task under the same budget B, read as our policy after every batch of the operator's schedule.

Its critics and replay buffer cost no env steps; the steps it collects are all that count. SAC's actor is a tanh-
squashed Gaussian MLP (ReLU, 256 × 256) that no θ⁰ of ours fits, so it starts from its own initialization: the
first point of its curve is its untrained actor, not the run's θ⁰. stable-baselines3 is imported only when a run
uses it (the ``baselines`` extra).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
from gymnasium.spaces import Box
from gymnasium.wrappers import TimeLimit

from metaimprove.errors import UserError
from metaimprove.evaluation.guard import Point
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.interop.sb3 import from_sac
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.sim.envs import AnyTask, UserEnv, make_env
from metaimprove.sim.policy import Policy


@dataclass(frozen=True)
class SACConfig:
    """The SB3 SAC settings ``sac`` runs with; every default is SB3's own (``SAC("MlpPolicy", env)``)."""

    learning_rate: float = 3e-4
    """Adam's step size for the actor, the critics and the entropy coefficient"""
    buffer_size: int = 1_000_000
    """replay buffer capacity in transitions (a run allocates at most B: it never collects more)"""
    learning_starts: int = 100
    """env steps of uniformly random actions before the first gradient step"""
    batch_size: int = 256
    """transitions per gradient step"""
    tau: float = 0.005
    """soft-update rate of the target critics"""
    gamma: float = 0.99
    """discount"""
    gradient_steps: int = 1
    """gradient steps per env step collected"""
    net_arch: tuple[int, ...] = (256, 256)
    """hidden layers of the actor and of each critic (ReLU)"""


CONFIG = SACConfig()
"""the settings of every ``sac`` run (SB3's defaults; the tests shrink them)"""


class _UnitActions(gymnasium.ActionWrapper):  # type: ignore[type-arg]
    """Declares actions in [-1, 1] and passes them on unchanged, as our simulator does with a family's robot."""

    def __init__(self, env: gymnasium.Env) -> None:  # type: ignore[type-arg]
        super().__init__(env)
        self.action_space = Box(-1.0, 1.0, env.action_space.shape, np.float32)

    def action(self, action: np.ndarray) -> np.ndarray:
        return action


def sac_env(task: AnyTask) -> gymnasium.Env:  # type: ignore[type-arg]
    """The env SAC trains on: the task's gymnasium env (a user env with its episode length as time limit), acting
    as our simulators do, so that its converted actor is evaluated on what it learned.

    A family's robot takes the policy's [-1, 1] actions as controls (SAC would otherwise scale its actions onto the
    robot's control range); a user env's Box is rescaled linearly by both SAC and :class:`GymSimulator`."""
    if isinstance(task, UserEnv):
        return TimeLimit(task.make(), task.episode_length)
    env = make_env(task)
    space = env.action_space
    if isinstance(space, Box) and (space.low == -1).all() and (space.high == 1).all():
        return env
    return _UnitActions(env)


def build(task: AnyTask, seed: int, budget: int, config: SACConfig | None = None) -> Any:
    """A fresh SB3 ``SAC`` on ``task`` seeded with ``seed``, on the CPU (torch threads as the caller set them)."""
    config = CONFIG if config is None else config
    try:
        from stable_baselines3 import SAC
    except ImportError as exc:
        raise UserError("the sac method needs stable-baselines3: pip install metaimprove[baselines]") from exc
    # A buffer larger than the run's env steps never fills: capping it at B changes nothing but the memory.
    return SAC("MlpPolicy", sac_env(task), learning_rate=config.learning_rate,
               buffer_size=max(1, min(config.buffer_size, budget)), learning_starts=config.learning_starts,
               batch_size=config.batch_size, tau=config.tau, gamma=config.gamma,
               gradient_steps=config.gradient_steps, policy_kwargs={"net_arch": list(config.net_arch)}, seed=seed,
               device="cpu", verbose=0)


def sac_points(task: AnyTask, seed: int, batch: int, budget: int, timings: list[float] | None = None,
               config: SACConfig | None = None) -> Iterator[Point]:
    """SAC's run on ``task`` from its own seeded init (:func:`untrained`, not the run's θ⁰): its actor after every
    ``batch`` env steps while the next batch fits in ``budget``.

    One ``learn`` call per batch, continuing the same episodes, replay buffer and step count: the policy of a point
    has taken the gradient steps of every env step before it. ``timings`` gets each batch's wall time (its env
    steps and gradient steps together)."""
    model = build(task, seed, budget, config)
    steps = 0
    while steps + batch <= budget:
        begin = time.perf_counter()
        model.learn(batch, reset_num_timesteps=steps == 0)
        if timings is not None:
            timings.append(time.perf_counter() - begin)
        steps += batch
        if model.num_timesteps != steps:  # one env, one step per collection: learn stops on the step
            raise RuntimeError(f"SAC took {model.num_timesteps} env steps where {steps} were asked")
        yield Point(steps, from_sac(model))


def untrained(task: AnyTask, seed: int, budget: int) -> Policy:
    """The ``sac`` curve's first point: SAC's untrained actor of seed ``seed`` (not the run's θ⁰), the same init
    that :func:`sac_points` then trains."""
    return from_sac(build(task, seed, budget))


def check_budget(config: ApplyConfig, ckpt: OperatorCheckpoint, budget: int, family: str) -> None:
    """SAC's last point must come after its first gradient step, or its whole curve is its random init."""
    batch = BatchSchedule.of(ckpt).batch
    last = budget // batch * batch
    if last <= CONFIG.learning_starts:
        raise UserError(f"budget B = {budget} env steps puts SAC's last point at {last} env steps, before its first "
                        f"gradient step after learning_starts = {CONFIG.learning_starts} steps; raise the budget")
