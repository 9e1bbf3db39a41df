"""The evaluation tests' shared fixture: a tiny domain-randomized policy."""

import pathlib

import pytest

from metaimprove.evaluation.baselines import DRConfig, train_dr
from metaimprove.sim.tasks import TaskConfig
from metaimprove.teachers import PPOConfig
from tests.helpers import TINY_TEACHER


@pytest.fixture(scope="session")
def dr_policy(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A DR policy from two PPO updates alternating over two training tasks."""
    out = tmp_path_factory.mktemp("dr") / "run"
    return train_dr(DRConfig(task=TaskConfig("halfcheetah_vel"), ppo=PPOConfig(**TINY_TEACHER), n_tasks=2,
                             iterations=2, out=str(out)))
