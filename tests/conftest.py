"""Fixtures shared across the test packages: tiny datasets and operators, built once per session.

Plain values and functions that tests share are in ``tests/helpers.py``.
"""

import dataclasses
import math
import pathlib
from collections.abc import Iterator

import pytest
import torch

from metaimprove.data.collect import collect
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.networks import ImprovementOperator, OperatorConfig
from metaimprove.sim.envs import mujoco_log
from metaimprove.sim.policy import PolicySpec
from metaimprove.sim.tasks import TaskConfig
from metaimprove.training.train import TrainConfig, train
from tests.helpers import ORACLE_TRAIN, TINY_ARS, TINY_TEACHER, TINY_TRAIN, tiny_config


@pytest.fixture(scope="session")
def reference_dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """One uninterrupted tiny collection (2 workers) that the other tests compare against; do not modify."""
    out = tmp_path_factory.mktemp("reference") / "data"
    collect(tiny_config(out))
    return out


@pytest.fixture(scope="session")
def hopper_dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A tiny PPO collection of hopper_rand_params (obs 11, act 3: another spec than halfcheetah_vel's 17 / 6)."""
    out = tmp_path_factory.mktemp("hopper") / "data"
    collect(tiny_config(out, task=TaskConfig("hopper_rand_params"), n_tasks=2, seeds=1, iterations=3, workers=1))
    return out


@pytest.fixture(scope="session")
def ars_dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A tiny ARS collection (3 tasks × 1 seed × 3 updates of 4 envs × 32 steps); do not modify."""
    out = tmp_path_factory.mktemp("ars") / "data"
    collect(tiny_config(out, teacher=TINY_ARS, n_tasks=3, seeds=1, iterations=3, workers=1))
    return out


@pytest.fixture(scope="session")
def operator_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """An untrained operator for the halfcheetah policy spec whose teacher is the tiny PPO."""
    spec = PolicySpec(17, 6)
    op = ImprovementOperator(spec, OperatorConfig())
    ckpt = OperatorCheckpoint.from_training(FeatureConfig(), op.config, spec, [1], torch.tensor([[0.0, 0.1]]), [],
                                            {"name": "ppo", "config": TINY_TEACHER})
    path = tmp_path_factory.mktemp("op") / "op.safetensors"
    ckpt.save(path, op, summary={})
    return path


@pytest.fixture(scope="session")
def ars_operator(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A small untrained operator with the shipped halfcheetah_vel operator's shape: HalfCheetah's policy spec
    (obs 17, act 6, hidden 32 × 32), an ARS teacher read through es_gradient, a warm-up narrower than its batch,
    ks 1, 2, 4, 8 with ask quantiles for each and a recorded ask_k = 1, trained on halfcheetah_vel train tasks.

    Unit tests read it instead of ``results/operators/`` (which ``test_shipped.py`` alone checks)."""
    spec = PolicySpec(17, 6, hidden=(32, 32))
    ks = [1, 2, 4, 8]
    envs = 2 * TINY_ARS.n_directions
    features = dataclasses.replace(TINY_TRAIN["features"], es_gradient=True,  # type: ignore[type-var]
                                   warmup=[[envs // 2, 4 * envs * TINY_ARS.n_steps]])
    asks = torch.tensor([[math.log2(k), 0.01 * k * q] for k in ks for q in (-1.0, 0.5, 2.0)])
    ckpt = OperatorCheckpoint.from_training(features, TINY_TRAIN["operator"], spec, ks, asks,  # type: ignore[arg-type]
                                            [f"halfcheetah_vel/train/{i}" for i in range(3)],
                                            {"name": "ars", "config": dataclasses.asdict(TINY_ARS)}, ask_k=1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ars_operator") / "operator.safetensors"
    ckpt.save(path, ckpt.new_operator(), summary={})
    return path


@pytest.fixture(scope="session")
def oracle_run(reference_dataset: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A tiny oracle operator's training run (features.task_input, one relabel round); do not modify."""
    out = tmp_path_factory.mktemp("oracle") / "run"
    train(TrainConfig(dataset=str(reference_dataset), out=str(out), **ORACLE_TRAIN))  # type: ignore[arg-type]
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
