"""The ``evaluate`` stage: a policy's mean return on a family's tasks or on a gymnasium env, under the evaluation
protocol every method shares (:func:`metaimprove.sim.rollout.evaluate`, apply's episodes of run ``seed``), written
to ``returns.csv``; with ``video=true``, one recorded episode per task as an MP4 (gymnasium's ``RecordVideo``,
rendered headless through ``MUJOCO_GL=egl``).
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import gymnasium
import numpy as np
from gymnasium.wrappers import RecordVideo
from omegaconf import MISSING

from metaimprove import seeds
from metaimprove.errors import UserError
from metaimprove.interop.sb3 import load_any_policy
from metaimprove.sim import rollout
from metaimprove.sim.envs import AnyTask, UserEnv, make_env
from metaimprove.sim.policy import Policy
from metaimprove.sim.tasks import TaskSelection, get_family
from metaimprove.storage import atomic_write_csv

RETURNS_CSV = "returns.csv"
FIELDS = ("task", "episodes", "seed", "mean_return", "video", "video_return")
"""the columns of ``returns.csv``: one row per task"""
HEADLESS_GL = "egl"
"""the MuJoCo rendering backend videos use unless ``MUJOCO_GL`` says otherwise (``osmesa`` is the other headless one)"""


@dataclass
class EvaluateConfig(TaskSelection):
    """Evaluate a policy: its mean return per task of a family (or on a gymnasium env), optionally with videos."""

    policy: str = MISSING
    """the policy: our policy file (sim.policy.save_policy; apply save_policies=true, dr, metalearn) or an SB3 .zip"""
    vecnormalize: str | None = None
    """SB3 input only: its VecNormalize .pkl, whose observation statistics become the policy's normalizer"""
    episodes: int = 8
    """evaluation episodes per task: the deterministic mean action, from fixed initial states"""
    seed: int = 0
    """whose evaluation episodes: apply's of its run seed (the same initial states, so the same returns)"""
    video: bool = False
    """also record one episode per task as an MP4 under out/videos/ (headless MuJoCo: MUJOCO_GL=egl by default;
    needs moviepy: pip install 'metaimprove[video]')"""
    out: str = MISSING
    """run directory: returns.csv and videos/ go inside (default runs/evaluate/<date>_<time>)"""


def run_evaluate(cfg: EvaluateConfig) -> list[dict[str, object]]:
    """The ``evaluate`` stage: every task's mean return (``cfg.episodes`` episodes) into ``out/returns.csv``, and
    with ``cfg.video`` an MP4 per task under ``out/videos/``. Everything is checked before anything is written.

    Returns the rows of ``returns.csv``.
    """
    targets = _targets(cfg)
    policy = load_any_policy(cfg.policy, cfg.vecnormalize)
    for target in targets:
        sim = rollout.simulator(target, 1, 0)
        if (sim.obs_dim, sim.act_dim) != (policy.spec.obs_dim, policy.spec.act_dim):
            raise UserError(f"policy {cfg.policy} takes obs {policy.spec.obs_dim} / act {policy.spec.act_dim} but "
                            f"{target.name} has obs {sim.obs_dim} / act {sim.act_dim}; give a policy of that env")
    if cfg.video:
        if importlib.util.find_spec("moviepy") is None:
            raise UserError("video=true writes MP4s through moviepy, which is not installed: pip install "
                            "'metaimprove[video]' (or moviepy)")
        # MuJoCo reads the backend when the first renderer is made: here, rendering once to check that it can.
        os.environ.setdefault("MUJOCO_GL", HEADLESS_GL)
        _rendering_env(targets[0]).close()
    out = Path(cfg.out)
    rows: list[dict[str, object]] = []
    for target in targets:
        mean = rollout.evaluate(policy, target, cfg.episodes, seed=seeds.evaluation(cfg.seed))
        rows.append({"task": target.name, "episodes": cfg.episodes, "seed": cfg.seed, "mean_return": mean,
                     "video": "", "video_return": ""})
        print(f"{target.name}: mean return {mean:.2f} over {cfg.episodes} episodes")
    if cfg.video:
        for target, row in zip(targets, rows, strict=True):
            video, row["video_return"] = record_episode(policy, target, out / "videos", seeds.evaluation(cfg.seed))
            row["video"] = video.relative_to(out).as_posix()
            print(f"{target.name}: wrote {video} (return {row['video_return']:.2f})")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out / RETURNS_CSV, FIELDS, rows)
    print(f"wrote {out / RETURNS_CSV}")
    return rows


def _targets(cfg: EvaluateConfig) -> list[AnyTask]:
    """What ``cfg`` evaluates on: its env, else its family's tasks (one-line errors for impossible settings)."""
    if cfg.episodes < 1:
        raise UserError(f"episodes must be >= 1, got {cfg.episodes}")
    if cfg.seed < 0:
        raise UserError(f"seed must be >= 0, got {cfg.seed}")
    if cfg.env is not None:
        return [UserEnv.resolve(cfg.env, cfg.episode_length)]
    if cfg.episode_length is not None:
        raise UserError("episode_length= sets the episodes of env=; a task family sets its own")
    if cfg.n_tasks < 1:
        raise UserError(f"n_tasks must be >= 1, got {cfg.n_tasks}")
    if cfg.task_start < 0:
        raise UserError(f"task_start must be >= 0, got {cfg.task_start}")
    return list(get_family(cfg.task.family).tasks(cfg.split, cfg.n_tasks, start=cfg.task_start))


def record_episode(policy: Policy, target: AnyTask, folder: Path, seed: int) -> tuple[Path, float]:
    """Record one episode of ``policy``'s deterministic mean action on ``target`` as ``folder/<task>.mp4`` through
    gymnasium's ``RecordVideo``; returns the file and the episode's return.

    The file appears whole or not at all: ``RecordVideo`` writes into a temporary folder beside it.
    """
    env = _rendering_env(target)
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", target.name)
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{name}.") as scratch:
        # A folder RecordVideo creates itself (it warns about one that exists).
        recorder = RecordVideo(env, str(Path(scratch) / "episode"), episode_trigger=lambda _: True, name_prefix=name,
                               disable_logger=True)
        low, high = env.action_space.low, env.action_space.high
        actor = policy.actor()
        obs, _ = recorder.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            action = np.clip(actor.mean(np.asarray(obs, dtype=np.float64)[None])[0], -1.0, 1.0)
            # Policies act in [-1, 1], rescaled onto the env's bounds as the collector does.
            obs, reward, terminated, truncated, _ = recorder.step(low + (action + 1.0) * (high - low) / 2.0)
            total += float(reward)
            done = terminated or truncated
        recorder.close()
        (written,) = (Path(scratch) / "episode").glob("*.mp4")
        target_file = folder / f"{name}.mp4"
        shutil.move(written, target_file)
    return target_file, total


def _free_quietly(exc: BaseException) -> None:
    """Free what a failed renderer left half-built in ``exc``'s frames now, without a word: gymnasium's viewer fails
    again in ``__del__`` (it has no GL context), which Python would print after the one-line error."""
    hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
    try:
        traceback.clear_frames(exc.__traceback__)
        gc.collect()
    finally:
        sys.unraisablehook = hook


def _rendering_env(target: AnyTask) -> gymnasium.Env:
    """``target``'s env rendering RGB frames, checked to render here (one-line error naming what to install)."""
    # PyOpenGL announces at INFO, on every run, that its optional accelerator module is missing.
    logging.getLogger("OpenGL").setLevel(logging.WARNING)
    if isinstance(target, UserEnv):
        try:
            env = gymnasium.make(target.env, max_episode_steps=target.episode_length, render_mode="rgb_array")
        except gymnasium.error.Error as exc:
            raise UserError(f"video=true makes env {target.env} with gymnasium.make(..., render_mode='rgb_array'), "
                            f"which failed ({' '.join(str(exc).split())}); register it as a gymnasium id") from exc
    else:
        env = make_env(target, render_mode="rgb_array")
    try:
        env.reset(seed=0)
        frame = env.render()
    except Exception as exc:  # whatever the GL stack raises (RuntimeError, AttributeError, ...), the fix is the same
        env.close()
        _free_quietly(exc)
        raise UserError(f"cannot render {target.name} headless with MUJOCO_GL={os.environ.get('MUJOCO_GL')} "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())}); install EGL (apt-get install libegl1 "
                        "libegl-mesa0 libgl1-mesa-dri) or OSMesa (libosmesa6 with MUJOCO_GL=osmesa)") from exc
    if not isinstance(frame, np.ndarray):
        env.close()
        raise UserError(f"{target.name} rendered {type(frame).__name__}, not an RGB frame; video=true needs an env "
                        "that renders rgb_array")
    return env
