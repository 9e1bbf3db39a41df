"""Gymnasium envs of the task families (``metaimprove/<Name>-v0``), the step rules they share with the batched
collector, and a user's own env (:class:`UserEnv`).

Why: see the design notes (docs/design.md, "Tasks and physics randomization" and "Simulator blow-ups").
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import gymnasium
import mujoco
import numpy as np
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from gymnasium.spaces import Box

from metaimprove.errors import UserError
from metaimprove.sim.tasks import (
    Physics,
    Task,
    TaskFamily,
    apply_physics,
    get_family,
    nominal_model,
    register_envs,
    robot_xml_path,
    settotalmass_accepted,
)

GROUND_AXES = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
"""the axes, in order, of the root slide joints that make up an own MJCF robot's ground position (x, then y)"""

# Joint speeds beyond this mean the integrator has diverged (the robots here stay well under 100).
QVEL_LIMIT = 1e3
BADQACC = int(mujoco.mjtWarning.mjWARN_BADQACC)

# Default control-cost weight of each reward kind (a family file may set its own ``ctrl_cost``).
CTRL_COST = {"velocity": 0.05, "direction": 0.05, "forward": 0.1}
# Reward kinds that need the robot to move in the plane (a 2-D root position).
PLANAR_REWARDS = ("heading", "goal")


@dataclass(frozen=True)
class Robot:
    """How gymnasium's v5 env of a robot steps, observes, resets and judges health (its defaults)."""

    frame_skip: int
    """physics substeps per env step"""
    reset_noise: float
    """initial qpos ~ qpos0 + U(-r, r); qvel ~ r·N(0, 1) or U(-r, r) (see ``normal_qvel``)"""
    normal_qvel: bool
    """initial qvel noise is Gaussian (HalfCheetah, Ant) rather than uniform (Hopper, Walker, Swimmer)"""
    ground_dims: int
    """leading qpos entries that are the root's ground position (x, or x and y): velocity is theirs, the
    observation leaves them out"""
    qvel_clip: float | None = None
    """the observation clips qvel to ±this (Hopper, Walker)"""
    z_index: int | None = None
    """qpos entry of the torso height, checked against ``healthy_z``"""
    healthy_z: tuple[float, float] = (-math.inf, math.inf)
    """healthy torso heights (open interval; closed when ``closed_z``)"""
    closed_z: bool = False
    """``healthy_z`` includes its ends (Ant) instead of excluding them (Hopper, Walker)"""
    healthy_angle: tuple[float, float] = (-math.inf, math.inf)
    """healthy torso pitch qpos[2] (open interval)"""
    healthy_state: float = math.inf
    """healthy |qpos[2:]|, |qvel| (strictly below, Hopper)"""


ROBOTS = {
    "half_cheetah": Robot(frame_skip=5, reset_noise=0.1, normal_qvel=True, ground_dims=1),
    "hopper": Robot(frame_skip=4, reset_noise=5e-3, normal_qvel=False, ground_dims=1, qvel_clip=10.0, z_index=1,
                    healthy_z=(0.7, math.inf), healthy_angle=(-0.2, 0.2), healthy_state=100.0),
    "walker2d": Robot(frame_skip=4, reset_noise=5e-3, normal_qvel=False, ground_dims=1, qvel_clip=10.0, z_index=1,
                      healthy_z=(0.8, 2.0), healthy_angle=(-1.0, 1.0)),
    # Ant-v5 with include_cfrc_ext_in_observation=False and no contact cost (see tasks/README.md).
    "ant": Robot(frame_skip=5, reset_noise=0.1, normal_qvel=True, ground_dims=2, z_index=2, healthy_z=(0.2, 1.0),
                 closed_z=True),
    "swimmer": Robot(frame_skip=4, reset_noise=0.1, normal_qvel=False, ground_dims=2),
}


def root_ground_dims(model: mujoco.MjModel) -> int:
    """Leading qpos entries that are the root's ground position in an MJCF model: 2 (x, y) when the first joint
    is free; else the leading slide joints of the first joint's body along x, then y (HalfCheetah: rootx, 1);
    0 when there are none."""
    if model.njnt == 0:
        return 0
    if model.jnt_type[0] == mujoco.mjtJoint.mjJNT_FREE:
        return 2
    dims = 0
    for j, axis in enumerate(GROUND_AXES):
        if not (j < model.njnt and model.jnt_type[j] == mujoco.mjtJoint.mjJNT_SLIDE and model.jnt_qposadr[j] == j
                and model.jnt_bodyid[j] == model.jnt_bodyid[0] and np.allclose(model.jnt_axis[j], axis)):
            break
        dims += 1
    return dims


def robot_of(family: TaskFamily) -> Robot:
    """How ``family``'s robot steps, resets and observes: a named robot's gymnasium v5 rules, or for an own MJCF
    file HalfCheetah's (frame skip 5, reset noise 0.1 with Gaussian qvel, no health check; ``frame_skip`` and
    ``reset_noise`` as the family sets them) with the root's ground position found by :func:`root_ground_dims`."""
    if family.robot in ROBOTS:
        return ROBOTS[family.robot]
    return _mjcf_robot(family.robot, family.frame_skip, family.reset_noise)


@cache
def _mjcf_robot(xml: str, frame_skip: int | None, reset_noise: float | None) -> Robot:
    cheetah = ROBOTS["half_cheetah"]
    return Robot(frame_skip=cheetah.frame_skip if frame_skip is None else frame_skip,
                 reset_noise=cheetah.reset_noise if reset_noise is None else reset_noise, normal_qvel=True,
                 ground_dims=root_ground_dims(nominal_model(xml)))


def task_reward(kind: str, params: Mapping[str, float], velocity: np.ndarray, position: np.ndarray,
                action: np.ndarray, ctrl_cost: float) -> np.ndarray:
    """Task reward of ``kind`` (without healthy bonus) for root ground velocities and positions ``[..., g]``
    (g = 1: x; g = 2: x, y) after the step, and actions ``[..., act_dim]``.

    ``velocity``: -|v_x - v*|; ``direction``: d v_x; ``forward``: v_x; ``heading``: (cos φ, sin φ)·v_xy;
    ``goal``: -‖p_xy - g‖ with g = r (cos α, sin α); each minus ``ctrl_cost``·|a|^2.
    """
    ctrl = ctrl_cost * np.einsum("...i,...i->...", action, action)
    if kind == "velocity":
        return -np.abs(velocity[..., 0] - params["target_velocity"]) - ctrl
    if kind == "direction":
        return params["direction"] * velocity[..., 0] - ctrl
    if kind == "heading":
        angle = params["angle"]
        return math.cos(angle) * velocity[..., 0] + math.sin(angle) * velocity[..., 1] - ctrl
    if kind == "goal":
        radius, angle = params["goal_radius"], params["goal_angle"]
        offset = position - np.array([radius * math.cos(angle), radius * math.sin(angle)])
        return -np.sqrt(np.einsum("...i,...i->...", offset, offset)) - ctrl
    return velocity[..., 0] - ctrl


def healthy(robot: Robot, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """True where the robot is healthy as gymnasium's v5 env judges it (always, for robots without a check)."""
    ok = np.isfinite(qpos).all(-1) & np.isfinite(qvel).all(-1)
    if robot.z_index is not None:
        z, (lo, hi) = qpos[..., robot.z_index], robot.healthy_z
        ok &= ((lo <= z) & (z <= hi)) if robot.closed_z else ((lo < z) & (z < hi))
    if math.isfinite(robot.healthy_angle[1]):
        lo, hi = robot.healthy_angle
        ok &= (lo < qpos[..., 2]) & (qpos[..., 2] < hi)
    if math.isfinite(robot.healthy_state):
        lim = robot.healthy_state
        ok &= (np.abs(qpos[..., 2:]) < lim).all(-1) & (np.abs(qvel) < lim).all(-1)
    return ok


def unstable(qpos: np.ndarray, qvel: np.ndarray, badqacc: np.ndarray) -> np.ndarray:
    """True where a simulation has blown up: MuJoCo flagged BADQACC, or the state is non-finite or exploding."""
    # NaN compares False, so "not <= limit" also catches a non-finite velocity.
    calm = (np.abs(qvel).max(-1) <= QVEL_LIMIT) & np.isfinite(qpos).all(-1)
    return np.asarray(badqacc, dtype=bool) | ~calm


@dataclass(frozen=True)
class StepRules:
    """What a family's env computes from the simulator state after a step: observation, reward, termination.

    The gymnasium env (one state) and the batched :class:`metaimprove.sim.rollout.Simulator` (``[E, ...]``
    states) both call :meth:`outcome`, so they agree bit for bit.
    """

    robot: Robot
    reward: str
    params: Mapping[str, float]
    ctrl_cost: float
    healthy_reward: float
    terminate_when_unhealthy: bool
    dt: float

    @staticmethod
    def of(task: Task, timestep: float) -> StepRules:
        """The rules of ``task``'s family, for a model whose physics timestep is ``timestep``."""
        fam = get_family(task.family)
        robot = robot_of(fam)
        if robot.ground_dims == 0:
            raise UserError(f"family {fam.name}: reward '{fam.reward}' needs the root's ground motion, but "
                            f"{fam.robot} has no root slide joint along x nor a free joint as its first joint")
        if fam.reward in PLANAR_REWARDS and robot.ground_dims < 2:
            raise UserError(f"family {fam.name}: reward '{fam.reward}' needs a robot moving in the plane, "
                            f"{fam.robot} moves along x only")
        if fam.ctrl_cost is None and fam.reward not in CTRL_COST:
            raise UserError(f"family {fam.name}: reward '{fam.reward}' has no default ctrl_cost; set one in its file")
        ctrl = CTRL_COST[fam.reward] if fam.ctrl_cost is None else fam.ctrl_cost
        return StepRules(robot, fam.reward, dict(task.params), ctrl, fam.healthy_reward,
                         fam.terminate_when_unhealthy, timestep * robot.frame_skip)

    @property
    def has_health(self) -> bool:
        """Whether health matters to this family (a healthy reward or termination)."""
        return self.healthy_reward != 0.0 or self.terminate_when_unhealthy

    def observe(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Observation for states ``[..., nq]``, ``[..., nv]``: qpos without the root's ground position, then
        qvel (clipped for Hopper and Walker), as gymnasium's v5 env."""
        if self.robot.qvel_clip is not None:
            qvel = np.clip(qvel, -self.robot.qvel_clip, self.robot.qvel_clip)
        return np.concatenate([qpos[..., self.robot.ground_dims:], qvel], axis=-1)

    def outcome(self, ground_before: np.ndarray, qpos: np.ndarray, qvel: np.ndarray, action: np.ndarray,
                badqacc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(observation, reward, terminated, unstable) after a step from root ground position ``ground_before``.

        A blown-up simulation is terminated with reward 0 and a zeroed observation.
        """
        ground = qpos[..., : self.robot.ground_dims]
        velocity = (ground - ground_before) / self.dt
        obs = self.observe(qpos, qvel)
        blown = unstable(qpos, qvel, badqacc)
        reward = task_reward(self.reward, self.params, velocity, ground, action, self.ctrl_cost)
        terminated = blown
        if self.has_health:
            fit = healthy(self.robot, qpos, qvel)
            # gymnasium adds the healthy reward to the forward reward before subtracting the control cost;
            # the sum here is in a different order, which is why it is compared to gymnasium only approximately.
            reward = reward + self.healthy_reward * fit
            if self.terminate_when_unhealthy:
                terminated = blown | ~fit
        if blown.any():
            obs = np.where(blown[..., None], 0.0, obs)
            reward = np.where(blown, 0.0, reward)
        return obs, reward, terminated, blown


def initial_states(robot: Robot, model: mujoco.MjModel, rng: np.random.Generator,
                   n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` initial (qpos, qvel) drawn as the robot's gymnasium v5 ``reset_model`` draws them."""
    r = robot.reset_noise
    qpos = model.qpos0 + rng.uniform(-r, r, size=(n, model.nq))
    qvel = r * rng.standard_normal((n, model.nv)) if robot.normal_qvel else rng.uniform(-r, r, size=(n, model.nv))
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


class TaskEnv(MujocoEnv):
    """A gymnasium v5 MuJoCo robot (HalfCheetah, Hopper, Walker2d, Ant, Swimmer) or a user's own MJCF robot, with a
    family's reward and a task's physics.

    Steps, resets and observes as the robot's gymnasium v5 env does by default (Ant without contact forces in
    its observation), with the family's reward and termination (:class:`StepRules`). Registered as
    ``metaimprove/<Name>-v0``: ``gymnasium.make("metaimprove/HalfCheetahVel-v0", target_velocity=1.0)``. A
    simulator blow-up (MuJoCo's BADQACC, a non-finite or exploding state) ends the episode as terminated with
    ``info["unstable"] = True``.

    Args:
        family: the task family's name (set by the registration).
        task: the task to simulate; if None, nominal physics with ``params``.
        render_mode: as in gymnasium.
        **params: task parameters, used when ``task`` is None.
    """

    metadata: dict[str, Any] = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"]}  # noqa: RUF012

    def __init__(self, family: str, task: Task | Mapping[str, Any] | None = None,
                 render_mode: str | None = None, **params: float) -> None:
        fam = get_family(family)
        if task is None:
            task = default_task(family, **params)
        elif not isinstance(task, Task):
            task = Task.from_dict(dict(task))
        if task.family != family:
            raise UserError(f"task of family {task.family} given to a {family} env")
        self._robot = robot_of(fam)
        with settotalmass_accepted():
            MujocoEnv.__init__(self, robot_xml_path(fam.robot), self._robot.frame_skip, observation_space=None,
                               render_mode=render_mode)
        self.metadata = {**TaskEnv.metadata, "render_fps": int(np.round(1.0 / self.dt))}
        obs_size = self.model.nq - self._robot.ground_dims + self.model.nv
        self.observation_space = Box(low=-np.inf, high=np.inf, shape=(obs_size,), dtype=np.float64)
        self.set_task(task)

    def set_task(self, task: Task) -> None:
        """Switch to ``task``: its parameters and its physics, scaled from the nominal model."""
        self.task = task
        self.rules = StepRules.of(task, self.model.opt.timestep)
        apply_physics(self.model, task.physics, nominal_model(get_family(task.family).robot))

    def _get_obs(self) -> np.ndarray:
        return self.rules.observe(self.data.qpos, self.data.qvel)

    def reset_model(self) -> np.ndarray:
        qpos, qvel = initial_states(self._robot, self.model, self.np_random, 1)
        self.set_state(qpos[0], qvel[0])
        return self._get_obs()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        ground_before = self.data.qpos[: self._robot.ground_dims].copy()
        bad_before = self.data.warning[BADQACC].number
        self.do_simulation(action, self.frame_skip)
        obs, reward, terminated, blown = self.rules.outcome(
            ground_before, self.data.qpos, self.data.qvel, np.asarray(action),
            np.asarray(self.data.warning[BADQACC].number > bad_before))
        info = {"x_position": self.data.qpos[0], "x_velocity": (self.data.qpos[0] - ground_before[0]) / self.dt,
                "unstable": bool(blown)}
        if self.render_mode == "human":
            self.render()
        return obs, float(reward), bool(terminated), False, info


def register_families() -> None:
    """Register every family with gymnasium (idempotent; :func:`~metaimprove.sim.tasks.register_envs`, which
    ``import metaimprove`` has already called for the families known then)."""
    register_envs()


def make_env(task: Task, render_mode: str | None = None) -> gymnasium.Env:
    """A gymnasium env (with the family's time limit) simulating ``task``; deterministic given the task."""
    register_families()
    return gymnasium.make(get_family(task.family).env_id, task=task, render_mode=render_mode)


@dataclass(frozen=True)
class UserEnv:
    """A user's own gymnasium env, run in place of a task: a registered id (``Hopper-v5``) or ``module:Class``.

    ``module:Class`` names a gymnasium env class (or any callable returning an env) in an importable module; it
    is built with no arguments. An id is built by ``gymnasium.make`` with ``episode_length`` as its time limit
    (``module:Id`` imports the module first, as gymnasium does). Make one with :meth:`resolve`.
    """

    env: str
    """the id or ``module:Class``"""
    episode_length: int
    """steps per episode"""

    @property
    def name(self) -> str:
        """The env string (what result rows call the task)."""
        return self.env

    @staticmethod
    def resolve(env: str, episode_length: int | None = None) -> UserEnv:
        """Check that ``env`` names a registered id or an importable ``module:Class`` (one-line errors otherwise);
        ``episode_length`` defaults to the id's ``max_episode_steps``."""
        factory, env_id = _factory(env)
        if episode_length is None and factory is None:
            try:
                episode_length = gymnasium.spec(env_id).max_episode_steps
            except gymnasium.error.Error as exc:
                raise UserError(f"unknown env '{env}': {' '.join(str(exc).split())} Give a registered gymnasium id "
                                "(e.g. Hopper-v5) or module:Class") from exc
        if episode_length is None:
            raise UserError(f"env {env} declares no episode length (max_episode_steps); give episode_length=<steps>")
        if episode_length < 1:
            raise UserError(f"episode_length must be >= 1, got {episode_length}")
        return UserEnv(env, int(episode_length))

    def make(self) -> gymnasium.Env:
        """A new instance of the env."""
        factory, env_id = _factory(self.env)
        # Gymnasium's MuJoCo robot files still use settotalmass; see settotalmass_accepted.
        with settotalmass_accepted():
            try:
                env = (gymnasium.make(env_id, max_episode_steps=self.episode_length) if factory is None
                       else factory())
            except gymnasium.error.Error as exc:
                raise UserError(f"cannot make env '{self.env}': {' '.join(str(exc).split())}") from exc
        if not isinstance(env, gymnasium.Env):
            raise UserError(f"{self.env} made a {type(env).__name__}, not a gymnasium.Env")
        return env


AnyTask = Task | UserEnv
"""what an experience can be collected on: a task of a family, or a user's own env"""


def _factory(env: str) -> tuple[Callable[[], Any] | None, str]:
    """``(the class of a module:Class, env)`` or ``(None, the gymnasium id)`` that ``env`` names."""
    register_families()  # our own families' ids are envs too
    module_name, _, attr = env.rpartition(":")
    if not module_name:
        return None, env
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import module '{module_name}' of env {env} ({exc}); put it on PYTHONPATH") from exc
    factory = getattr(module, attr, None)
    return (factory, env) if callable(factory) else (None, attr)


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
