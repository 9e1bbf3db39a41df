"""Batched experience collection: one policy θ, one task, many envs stepped together in C (``mujoco.batch``),
returned as an :class:`Experience`; and :func:`evaluate` / :func:`evaluate_many`, the evaluation protocol every
method shares, many policies' evaluations batched in one simulator.

Why: see the design notes (docs/design.md, "The collector on mujoco.batch").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import mujoco
import mujoco.batch
import numpy as np
import torch
from gymnasium.spaces import Box

from metaimprove import seeds
from metaimprove.errors import UserError
from metaimprove.sim.envs import BADQACC, ROBOTS, AnyTask, StepRules, UserEnv, initial_states
from metaimprove.sim.policy import Policy
from metaimprove.sim.tasks import Task, build_model, get_family

# HalfCheetah's physics substeps per env step (the baseline of benchmarks/throughput.py).
FRAME_SKIP = ROBOTS["half_cheetah"].frame_skip
_threads = 1
"""threads each :class:`Simulator` made in this process steps its envs on (:func:`set_threads`)"""


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_threads(threads: int, workers: int) -> int:
    """``threads``, or where it is 0 the cores each of ``workers`` processes has to itself (at least one)."""
    return threads or max(1, cores() // max(1, workers))


def set_threads(threads: int) -> None:
    """Step the envs of every :class:`Simulator` this process makes from now on, on ``threads`` threads. Results
    are the same at any count (``mujoco.batch`` steps each env exactly as a loop over them would)."""
    global _threads
    if threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    _threads = threads


@dataclass
class Experience:
    """What a policy collected: ``T`` steps of ``E`` environments.

    ``obs[t]`` is the raw observation the action ``action[t]`` was taken in; ``action`` holds the
    unclipped Gaussian samples (the env received them clipped to [-1, 1]) and ``log_prob`` their
    log-density. An episode that hit the time limit (or the end of the batch) has ``truncated``;
    one that ended for good (the robot fell: Hopper, Walker, Ant; or its simulation blew up) has
    ``terminated``. ``trunc_obs[k]`` is the observation that followed the truncation at
    ``trunc_index[k] = (t, e)``, for value bootstrapping.

    A teacher that explores in parameter space (ARS) runs every env with its own perturbed parameters:
    ``perturbation[e]`` is env ``e``'s θ_e − θ, so that τ holds all the teacher's update needs; it is
    ``None`` when every env ran θ itself.
    """

    obs: torch.Tensor  # [T, E, obs] float32
    action: torch.Tensor  # [T, E, act] float32
    log_prob: torch.Tensor  # [T, E] float32
    reward: torch.Tensor  # [T, E] float32
    terminated: torch.Tensor  # [T, E] bool
    truncated: torch.Tensor  # [T, E] bool
    trunc_obs: torch.Tensor  # [K, obs] float32
    trunc_index: torch.Tensor  # [K, 2] int64
    episode_returns: torch.Tensor  # [n_episodes] float32, episodes that ran to their time limit or terminated
    n_unstable: int  # episodes ended by a simulator blow-up (not counted in episode_returns)
    perturbation: torch.Tensor | None = None  # [E, P] float32, θ_e − θ of each env (parameter-space exploration)

    @property
    def n_steps(self) -> int:
        """Environment steps in this batch (T × E)."""
        return self.obs.shape[0] * self.obs.shape[1]

    @property
    def mean_return(self) -> float:
        """Mean return of the completed episodes (NaN if none completed)."""
        return float(self.episode_returns.mean()) if len(self.episode_returns) else float("nan")


class Simulator:
    """``n_envs`` simulations of one task, stepped together in C (``mujoco.batch.Batch``), with observations and
    rewards from the gymnasium env's own :class:`~metaimprove.sim.envs.StepRules`, so both agree exactly.

    Args:
        task: the task (its physics are applied to the robot's nominal model).
        n_envs: number of parallel simulations.
        seed: seeds the initial-state noise.

    Its envs are stepped on the threads :func:`set_threads` set (never more than there are envs).
    """

    def __init__(self, task: Task, n_envs: int, seed: int) -> None:
        self.task = task
        self.n_envs = n_envs
        self.episode_length = episode_length(task)
        self.model = build_model(task)
        self.rules = StepRules.of(task, self.model.opt.timestep)
        self.dt = self.rules.dt
        self._rng = np.random.default_rng(seed)
        self._batch = mujoco.batch.Batch(self.model, nsim=n_envs, nthread=min(_threads, n_envs))
        self._qpos = self._batch.bind("qpos")
        self._qvel = self._batch.bind("qvel")
        self._ctrl = self._batch.bind("ctrl")
        self.obs_dim = self.model.nq - self.rules.robot.ground_dims + self.model.nv
        self.act_dim = self.model.nu

    def reset(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Reset ``ids`` (default all) to fresh initial states; returns every env's observation."""
        ids = np.arange(self.n_envs) if ids is None else ids
        if len(ids):
            self._batch.reset(ids, stage=mujoco.mjtStage.mjSTAGE_NONE)
            qpos, qvel = initial_states(self.rules.robot, self.model, self._rng, len(ids))
            self.set_state(qpos, qvel, ids)
        return self.observation()

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Overwrite the state of ``ids`` (default all)."""
        ids = np.arange(self.n_envs) if ids is None else ids
        self._qpos[ids] = qpos
        self._qvel[ids] = qvel
        self._batch.forward(ids)

    def observation(self) -> np.ndarray:
        """Current observations ``[n_envs, obs]`` (float64)."""
        return self.rules.observe(self._qpos, self._qvel)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Apply ``action [n_envs, act]``; returns (obs, reward, terminated, unstable) as gymnasium's env would.

        Terminated envs (fallen or blown up) must be reset by the caller; unstable ones got reward 0 and a
        zeroed observation.
        """
        ground_before = self._qpos[:, : self.rules.robot.ground_dims].copy()
        bad_before = self._batch.warning[:, BADQACC, 1].copy()
        self._ctrl[:] = action
        try:
            self._batch.step(nstep=self.rules.robot.frame_skip)
            failed = np.zeros(self.n_envs, dtype=bool)
        except mujoco.batch.SimulationError as exc:
            failed = np.isin(np.arange(self.n_envs), exc.ids)
        badqacc = (self._batch.warning[:, BADQACC, 1] > bad_before) | failed
        return self.rules.outcome(ground_before, self._qpos, self._qvel, action, badqacc)


class GymSimulator:
    """``n_envs`` instances of a user's own gymnasium env behind :class:`Simulator`'s interface, stepped in turn.

    The policy's actions lie in [-1, 1]; an env whose action Box has other (finite) bounds gets them rescaled
    linearly onto ``[low, high]``. Env ``e`` is seeded with ``seed · n_envs + e`` at its first reset and draws
    its later resets from its own generator. An episode the env truncates before ``episode_length`` counts as
    terminated (never bootstrapped); a non-finite observation or reward counts as a blow-up (``unstable``).

    Args:
        task: the env (its episode length included).
        n_envs: number of env instances.
        seed: seeds the envs' resets.
    """

    def __init__(self, task: UserEnv, n_envs: int, seed: int) -> None:
        self.task = task
        self.n_envs = n_envs
        self.episode_length = episode_length(task)
        self._envs = [task.make() for _ in range(n_envs)]
        obs_space, act_space = self._envs[0].observation_space, self._envs[0].action_space
        if not (isinstance(obs_space, Box) and isinstance(act_space, Box) and len(obs_space.shape) == 1
                and len(act_space.shape) == 1):
            raise UserError(f"env {task.env} has observation space {obs_space} and action space {act_space}; "
                            "metaimprove's policies need one-dimensional Box spaces")
        low, high = act_space.low.astype(np.float64), act_space.high.astype(np.float64)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise UserError(f"env {task.env} has an unbounded action space {act_space}; metaimprove's policies act "
                            "in [-1, 1] and rescale onto finite bounds")
        # None: the env acts in [-1, 1] itself, and actions pass unchanged.
        self._scale = None if (low == -1).all() and (high == 1).all() else ((high - low) / 2, (high + low) / 2)
        self.obs_dim, self.act_dim = obs_space.shape[0], act_space.shape[0]
        self._seeds: list[int | None] = [seeds.env_reset(seed, n_envs, e) for e in range(n_envs)]
        self._obs = np.zeros((n_envs, self.obs_dim))
        self._steps = np.zeros(n_envs, dtype=np.int64)

    def reset(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Reset ``ids`` (default all); returns every env's observation."""
        for e in np.arange(self.n_envs) if ids is None else ids:
            seed, self._seeds[e] = self._seeds[e], None
            self._obs[e] = self._envs[e].reset(seed=seed)[0]
            self._steps[e] = 0
        return self._obs.copy()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Apply ``action [n_envs, act]`` (in [-1, 1]); returns (obs, reward, terminated, unstable) as
        :class:`Simulator` does."""
        if self._scale is not None:
            action = action * self._scale[0] + self._scale[1]
        reward = np.zeros(self.n_envs)
        terminated = np.zeros(self.n_envs, dtype=bool)
        self._steps += 1
        for e, env in enumerate(self._envs):
            obs, reward[e], term, trunc, _ = env.step(action[e])
            self._obs[e] = obs
            # The time limit at episode_length is the Collector's to handle (it bootstraps there).
            terminated[e] = term or (trunc and self._steps[e] < self.episode_length)
        blown = ~(np.isfinite(self._obs).all(-1) & np.isfinite(reward))
        self._obs[blown] = 0.0
        reward[blown] = 0.0
        return self._obs.copy(), reward, terminated | blown, blown


def episode_length(task: AnyTask) -> int:
    """Steps per episode of ``task``: its family's, or a user env's own."""
    return task.episode_length if isinstance(task, UserEnv) else get_family(task.family).episode_length


def simulator(task: AnyTask, n_envs: int, seed: int) -> Simulator | GymSimulator:
    """The simulator of ``task``: batched MuJoCo for a family's task, a :class:`GymSimulator` for a user's env."""
    return Simulator(task, n_envs, seed) if isinstance(task, Task) else GymSimulator(task, n_envs, seed)


class Collector:
    """Collects whole batches of experience of a policy on one task (or a user's env, see :func:`simulator`).

    Every :meth:`collect` call starts fresh episodes in all envs, so a batch holds the experience
    of exactly one policy; with ``n_steps`` a multiple of the episode length it holds whole episodes.

    Args:
        task: the task (or user env) to run.
        n_envs: environments stepped together.
        seed: seeds initial states and action noise; same seed, same numbers.
    """

    def __init__(self, task: AnyTask, n_envs: int, seed: int) -> None:
        self.sim = simulator(task, n_envs, seed)
        # Action noise has its own stream so that resets and actions never shift each other.
        self._noise = np.random.default_rng([seed, 1])

    def collect(self, policy: Policy, n_steps: int, deterministic: bool = False,
                log_probs: bool = True) -> Experience:
        """Run ``policy`` for ``n_steps`` steps per env (``n_steps × n_envs`` env steps); without ``log_probs`` the
        experience's ``log_prob`` is zeros (for a caller that recomputes or never reads it)."""
        sim, E, L = self.sim, self.sim.n_envs, self.sim.episode_length
        T = n_steps
        obs_buf = np.empty((T, E, sim.obs_dim), dtype=np.float32)
        act_buf = np.empty((T, E, sim.act_dim), dtype=np.float32)
        rew_buf = np.empty((T, E), dtype=np.float32)
        term_buf = np.zeros((T, E), dtype=bool)
        trunc_buf = np.zeros((T, E), dtype=bool)
        trunc_obs, trunc_index, returns = [], [], []
        n_unstable = 0
        ep_step = np.zeros(E, dtype=np.int64)
        ep_return = np.zeros(E, dtype=np.float64)
        actor = policy.actor()
        obs = sim.reset()
        for t in range(T):
            action = actor.mean(obs)
            if not deterministic:
                action = action + actor.std * self._noise.standard_normal(action.shape)
            next_obs, reward, terminated, blown = sim.step(np.minimum(np.maximum(action, -1.0), 1.0))
            obs_buf[t], act_buf[t], rew_buf[t] = obs, action, reward
            ep_step += 1
            ep_return += reward
            obs = next_obs
            # Most steps end no episode: skip the bookkeeping below unless one ends here.
            if not terminated.any() and t < T - 1 and ep_step.max() < L:
                continue
            timeout = (ep_step >= L) & ~terminated
            cut = timeout | ((t == T - 1) & ~terminated)
            term_buf[t], trunc_buf[t] = terminated, cut
            for e in np.flatnonzero(cut):
                trunc_obs.append(next_obs[e].astype(np.float32))
                trunc_index.append((t, e))
            returns.extend(ep_return[timeout | (terminated & ~blown)].tolist())
            n_unstable += int(blown.sum())
            done = np.flatnonzero(timeout | terminated)
            if len(done) and t < T - 1:
                ep_step[done] = 0
                ep_return[done] = 0.0
                obs = sim.reset(done)
        obs_t, act_t = torch.from_numpy(obs_buf), torch.from_numpy(act_buf)
        return Experience(
            obs=obs_t,
            action=act_t,
            # One batched evaluation, in the same float32 torch code PPO's ratio uses.
            log_prob=policy.log_prob(obs_t, act_t) if log_probs else torch.zeros(T, E),
            reward=torch.from_numpy(rew_buf),
            terminated=torch.from_numpy(term_buf),
            truncated=torch.from_numpy(trunc_buf),
            trunc_obs=torch.from_numpy(np.asarray(trunc_obs, dtype=np.float32).reshape(-1, sim.obs_dim)),
            trunc_index=torch.as_tensor(trunc_index, dtype=torch.int64).reshape(-1, 2),
            episode_returns=torch.as_tensor(returns, dtype=torch.float32),
            n_unstable=n_unstable,
        )


EVAL_ENVS = 64
"""most envs :func:`evaluate_many` steps in one simulator: its policies go in chunks of ``EVAL_ENVS // n_episodes``.
At 64 a step's Python costs little beside the physics, and a chunk stops soon after its own episodes end (robots
that fall): larger chunks measured no faster on HalfCheetah and slower on Walker (docs/performance.md)."""


def evaluate(policy: Policy, task: AnyTask, n_episodes: int = 8, seed: int = 0) -> float:
    """Mean return of ``policy``'s deterministic mean action over ``n_episodes`` fixed episodes: the evaluation
    protocol every method shares (:func:`evaluate_many` of one policy)."""
    return evaluate_many([policy], task, n_episodes, seed)[0]


def evaluate_many(policies: Sequence[Policy], task: AnyTask, n_episodes: int = 8, seed: int = 0) -> list[float]:
    """Mean return of each policy's deterministic mean action over ``n_episodes`` fixed episodes.

    The evaluation protocol every method shares: same task, same seed, same initial states. An episode counts up to
    its first end (time limit, fall or blow-up); what the env did after a reset is not in it.

    The policies run side by side in one batched simulator (per chunk of :data:`EVAL_ENVS` envs), each in a block of
    ``n_episodes`` envs from the initial states a simulator of ``n_episodes`` envs seeded with ``seed`` starts from,
    its actions computed from its block's observations alone: each return is the one the policy gets evaluated by
    itself, bit for bit. A user's env is evaluated one policy at a time (its envs step in turn in Python anyway, and
    its resets are seeded per env of a simulator).
    """
    returns: list[float] = []
    if isinstance(task, UserEnv):
        for policy in policies:
            sim = GymSimulator(task, n_episodes, seed)
            returns += _first_episode_means(sim, sim.reset(), [policy])
        return returns
    per_sim = max(1, EVAL_ENVS // n_episodes)
    for i in range(0, len(policies), per_sim):
        chunk = policies[i : i + per_sim]
        sim = Simulator(task, len(chunk) * n_episodes, seed)
        # What Simulator(task, n_episodes, seed).reset() starts from (its generator is seeded with seed), per block.
        qpos, qvel = initial_states(sim.rules.robot, sim.model, np.random.default_rng(seed), n_episodes)
        sim.reset()
        sim.set_state(np.tile(qpos, (len(chunk), 1)), np.tile(qvel, (len(chunk), 1)))
        returns += _first_episode_means(sim, sim.observation(), chunk)
    return returns


def _first_episode_means(sim: Simulator | GymSimulator, obs: np.ndarray, policies: Sequence[Policy]) -> list[float]:
    """Mean first-episode return of each policy, policy ``k`` acting deterministically in envs ``[k n, (k + 1) n)``
    of ``sim`` (``n = sim.n_envs / len(policies)``) from their observations ``obs``.

    What makes each return the one the policy gets alone, bit for bit: ``mujoco.batch`` steps every env as a loop over
    them would; each block's actions come from the same numpy code on arrays of the same shape (``[n, obs]``); and its
    return is reduced by the same float32 torch code on tensors of the same shape (``[L, n]``). Ended envs are reset
    and stepped on, uncounted; the loop stops when every first episode has ended.
    """
    E, L = sim.n_envs, sim.episode_length
    n = E // len(policies)
    blocks = [slice(k * n, (k + 1) * n) for k in range(len(policies))]
    actors = [policy.actor() for policy in policies]
    reward = np.zeros((L, E), dtype=np.float32)
    counted = np.zeros((L, E), dtype=bool)  # step t is in env e's first episode
    running = np.ones(E, dtype=bool)
    action = np.zeros((E, sim.act_dim))
    for t in range(L):
        for block, actor in zip(blocks, actors, strict=True):
            if running[block].any():
                action[block] = actor.mean(obs[block])
        obs, reward[t], terminated, _ = sim.step(np.minimum(np.maximum(action, -1.0), 1.0))
        counted[t] = running
        if terminated.any():
            running &= ~terminated
            if not running.any():
                break
            obs = sim.reset(np.flatnonzero(terminated))
    return [float((torch.from_numpy(reward[:, block].copy()) * torch.from_numpy(counted[:, block].copy())).sum(0)
                  .mean()) for block in blocks]
