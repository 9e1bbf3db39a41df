"""Shared by the collection and CLI tests: a tiny PPO, a tiny collection, and running the real CLI."""

import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from metaimprove.data.collect import CollectConfig, collect
from metaimprove.sim.envs import mujoco_log
from metaimprove.sim.tasks import TaskConfig
from metaimprove.teachers import PPOConfig

# Two envs × 32 steps per update (below the 256-step episode, so episodes are cut by the batch end).
TINY_TEACHER = {"n_envs": 2, "n_steps": 32, "minibatch_size": 32, "n_epochs": 1}
TINY_PLAN = {"n_tasks": 3, "seeds": 2, "iterations": 2}
# The same collection as tiny_config(), as CLI overrides.
TINY_OVERRIDES = [f"teacher.{k}={v}" for k, v in TINY_TEACHER.items()] + [f"{k}={v}" for k, v in TINY_PLAN.items()]
CLI_TIMEOUT = 240


def tiny_config(out: pathlib.Path, **changes: object) -> CollectConfig:
    """A 3 tasks × 2 seeds × 2 iterations collection of halfcheetah_vel with a tiny PPO into ``out``."""
    settings: dict[str, object] = {"task": TaskConfig("halfcheetah_vel"), "teacher": PPOConfig(**TINY_TEACHER),
                                   "workers": 2, "out": str(out), **TINY_PLAN}
    settings.update(changes)
    return CollectConfig(**settings)  # type: ignore[arg-type]


def run_cli(args: list[str], cwd: pathlib.Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``python -m metaimprove <args>`` in ``cwd``, as a user would run it."""
    env = {k: v for k, v in os.environ.items() if k not in ("METAIMPROVE_DEBUG", "HYDRA_FULL_ERROR")}
    return subprocess.run([sys.executable, "-m", "metaimprove", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT, check=False, **kwargs)  # type: ignore[call-overload]


def dataset_files(root: pathlib.Path) -> dict[str, bytes]:
    """The files that make up a dataset (config, manifest, shards) by relative path, with their bytes."""
    paths = [root / "config.yaml", root / "manifest.json", *sorted((root / "shards").iterdir())]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in paths}


@pytest.fixture(scope="session")
def reference_dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """One uninterrupted tiny collection (2 workers) that the other tests compare against; do not modify."""
    out = tmp_path_factory.mktemp("reference") / "data"
    collect(tiny_config(out))
    return out


@pytest.fixture(scope="session", autouse=True)
def _mujoco_log_out_of_the_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """MuJoCo would append its warnings to MUJOCO_LOG.TXT in the working directory: the repository."""
    with mujoco_log(tmp_path_factory.mktemp("mujoco_log")):
        yield


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """The test networks are tiny: extra intra-op threads only contend with the collector workers."""
    torch.set_num_threads(1)
