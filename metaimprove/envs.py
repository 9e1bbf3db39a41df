"""Gymnasium environments for the task families, and the reward/observation code they share with the
fast collector (:mod:`metaimprove.rollout`), so both compute exactly the same numbers.

Each family registers as ``metaimprove/<Name>-v0`` and takes either a whole ``task=Task`` or task
parameters as keyword arguments (``gymnasium.make("metaimprove/HalfCheetahVel-v0", target_velocity=1.0)``).
A simulator blow-up (MuJoCo's BADQACC warning, a non-finite or exploding state) ends the episode
with ``info["unstable"] = True`` instead of crashing.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import gymnasium
import mujoco
import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from metaimprove.errors import UserError
from metaimprove.tasks import (
    Physics,
    Task,
    apply_physics,
    get_family,
    load_families,
    nominal_model,
    robot_xml_path,
    settotalmass_accepted,
)

# Joint speeds beyond this mean the integrator has diverged (HalfCheetah stays well under 100).
QVEL_LIMIT = 1e3
RESET_NOISE = 0.1
BADQACC = int(mujoco.mjtWarning.mjWARN_BADQACC)

# Control-cost weight of each reward kind.
CTRL_COST = {"velocity": 0.05, "direction": 0.05, "forward": 0.1}


def task_reward(kind: str, params: Mapping[str, float], x_velocity: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Reward of ``kind`` for forward velocities ``[...]`` and actions ``[..., act_dim]``.

    ``velocity``: -|v_x - v*| - 0.05|a|^2; ``direction``: d v_x - 0.05|a|^2;
    ``forward``: v_x - 0.1|a|^2.
    """
    ctrl = CTRL_COST[kind] * np.einsum("...i,...i->...", action, action)
    if kind == "velocity":
        return -np.abs(x_velocity - params["target_velocity"]) - ctrl
    if kind == "direction":
        return params["direction"] * x_velocity - ctrl
    return x_velocity - ctrl


def observe(qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """HalfCheetah's observation for states ``[..., nq]``, ``[..., nv]``: qpos without root x, then qvel."""
    return np.concatenate([qpos[..., 1:], qvel], axis=-1)


def unstable(qpos: np.ndarray, qvel: np.ndarray, badqacc: np.ndarray) -> np.ndarray:
    """True where a simulation has blown up: MuJoCo flagged BADQACC, or the state is non-finite or exploding."""
    # NaN compares False, so "not <= limit" also catches a non-finite velocity.
    calm = (np.abs(qvel).max(-1) <= QVEL_LIMIT) & np.isfinite(qpos).all(-1)
    return np.asarray(badqacc, dtype=bool) | ~calm


def initial_states(model: mujoco.MjModel, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` initial (qpos, qvel) drawn as gymnasium's HalfCheetah-v5 ``reset_model`` draws them."""
    qpos = model.qpos0 + rng.uniform(-RESET_NOISE, RESET_NOISE, size=(n, model.nq))
    qvel = RESET_NOISE * rng.standard_normal((n, model.nv))
    return qpos, qvel


def default_task(family: str, **params: float) -> Task:
    """A task of ``family`` with nominal physics and the given parameters (others at their defaults)."""
    fam = get_family(family)
    unknown = set(params) - set(fam.params)
    if unknown:
        raise UserError(f"unknown task parameters {sorted(unknown)} for {family}; it has {sorted(fam.params)}")
    values = {}
    for name, rng in fam.params.items():
        if name in params:
            values[name] = float(params[name])
        elif rng.choices:
            values[name] = float(rng.choices[-1])
        else:
            assert rng.train is not None
            values[name] = 0.5 * (rng.train[0] + rng.train[1])
    return Task(family, "custom", 0, tuple(sorted(values.items())), Physics.nominal(nominal_model(fam.robot)))


class TaskEnv(HalfCheetahEnv):
    """HalfCheetah-v5 with a family's reward and a task's physics.

    Args:
        family: the task family's name (set by the registration).
        task: the task to simulate; if None, nominal physics with ``params``.
        render_mode: as in gymnasium.
        **params: task parameters, used when ``task`` is None.
    """

    def __init__(self, family: str, task: Task | Mapping[str, Any] | None = None,
                 render_mode: str | None = None, **params: float) -> None:
        fam = get_family(family)
        if task is None:
            task = default_task(family, **params)
        elif not isinstance(task, Task):
            task = Task.from_dict(dict(task))
        if task.family != family:
            raise UserError(f"task of family {task.family} given to a {family} env")
        with settotalmass_accepted():
            super().__init__(xml_file=robot_xml_path(fam.robot), render_mode=render_mode,
                             reset_noise_scale=RESET_NOISE)
        self._reward_kind = fam.reward
        self.set_task(task)

    def set_task(self, task: Task) -> None:
        """Switch to ``task``: its parameters and its physics, scaled from the nominal model."""
        self.task = task
        self._params = dict(task.params)
        apply_physics(self.model, task.physics, nominal_model(get_family(task.family).robot))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        x_before = self.data.qpos[0]
        bad_before = self.data.warning[BADQACC].number
        self.do_simulation(action, self.frame_skip)
        x_velocity = (self.data.qpos[0] - x_before) / self.dt
        obs = self._get_obs()
        blown = bool(unstable(self.data.qpos, self.data.qvel, self.data.warning[BADQACC].number > bad_before))
        reward = float(task_reward(self._reward_kind, self._params, np.asarray(x_velocity), np.asarray(action)))
        if blown:
            obs, reward = np.nan_to_num(obs, nan=0.0, posinf=0.0, neginf=0.0), 0.0
        info = {"x_position": self.data.qpos[0], "x_velocity": x_velocity, "unstable": blown}
        return obs, reward, blown, False, info


def register_families() -> None:
    """Register every shipped family with gymnasium (idempotent)."""
    for fam in load_families().values():
        if fam.env_id not in gymnasium.registry:
            gymnasium.register(id=fam.env_id, entry_point=TaskEnv, kwargs={"family": fam.name},
                               max_episode_steps=fam.episode_length)


def make_env(task: Task, render_mode: str | None = None) -> gymnasium.Env:
    """A gymnasium env (with the family's time limit) simulating ``task``; deterministic given the task."""
    register_families()
    return gymnasium.make(get_family(task.family).env_id, task=task, render_mode=render_mode)


def route_mujoco_warnings(directory: Path | None) -> Callable[[str], None] | None:
    """Send MuJoCo's warnings to ``directory/MUJOCO_LOG.TXT`` (or to Python warnings when None) from now on;
    returns the previous handler. Worker processes call this once; elsewhere use :func:`mujoco_log`.

    Unhandled, MuJoCo prints each warning and appends it to MUJOCO_LOG.TXT in the working
    directory, which is the repository when one runs ``metaimprove`` there; a stage's log belongs
    to its run directory.
    """

    def handler(message: str) -> None:
        if directory is None:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=1)
            return
        with open(directory / "MUJOCO_LOG.TXT", "a") as log:
            log.write(f"WARNING {time.ctime()}: {message}\n")

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(handler)
    return previous


@contextlib.contextmanager
def mujoco_log(directory: Path | None) -> Iterator[None]:
    """:func:`route_mujoco_warnings` for the duration of a ``with`` block."""
    previous = route_mujoco_warnings(directory)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)
