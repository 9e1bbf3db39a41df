"""The ``sac`` peer of apply: SB3's SAC on the run's task, a point per operator batch, its own actor read exactly."""

import dataclasses
import pathlib
import sys

import numpy as np
import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.evaluation import sac
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.methods import METHODS
from metaimprove.evaluation.sac import SACConfig
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.networks import ImprovementOperator, OperatorConfig
from metaimprove.sim.policy import PolicySpec
from metaimprove.sim.tasks import get_family
from tests.helpers import apply_config, curve_rows

pytest.importorskip("stable_baselines3")

# Small enough to take gradient steps within the tests' 2 × 64 env steps.
TINY_SAC = SACConfig(learning_starts=32, batch_size=32, net_arch=(32, 32))


@pytest.fixture
def tiny_sac(monkeypatch: pytest.MonkeyPatch) -> SACConfig:
    monkeypatch.setattr(sac, "CONFIG", TINY_SAC)
    return TINY_SAC


def _sac_curves(rows: list[dict[str, str]]) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["method"] == "sac":
            curves.setdefault(r["seed"], []).append((int(r["env_steps"]), float(r["return"])))
    return curves


def test_sac_is_registered_as_a_peer_with_its_own_start() -> None:
    method = METHODS["sac"]
    assert method.points is not None and method.on_user_env and not method.improves_start
    assert not method.uses_operator and method.needs == ()


def test_apply_runs_sac_with_a_point_every_batch_deterministically(operator_path: pathlib.Path,
                                                                   tmp_path: pathlib.Path, tiny_sac: SACConfig) -> None:
    apply(apply_config(operator_path, tmp_path / "a", methods=["sac", "no_update"]))
    rows = curve_rows(tmp_path / "a")
    curves = _sac_curves(rows)
    assert sorted(curves) == ["0", "1"]
    for points in curves.values():
        assert [s for s, _ in points] == [0, 64, 128]  # its init, then the 2 batches of 2 × 32 of B
        assert all(np.isfinite(r) for _, r in points)
    assert curves["0"] != curves["1"]  # each seed its own SAC
    # SAC's start is its own untrained actor, not the run's θ⁰
    theta0 = {r["seed"]: float(r["return"]) for r in rows if r["method"] == "no_update" and r["env_steps"] == "0"}
    assert {seed: points[0][1] for seed, points in curves.items()} != theta0
    apply(apply_config(operator_path, tmp_path / "b", methods=["sac"]))
    assert _sac_curves(curve_rows(tmp_path / "b")) == curves  # seeded: the same curves again


def test_sac_points_are_its_actor_after_each_batch(tiny_sac: SACConfig) -> None:
    task = get_family("halfcheetah_vel").task("test", 0)
    points = list(sac.sac_points(task, seed=3, batch=48, budget=150))
    assert [p.steps for p in points] == [48, 96, 144]
    first, last = points[0].policy, points[-1].policy
    assert first.spec == PolicySpec(17, 6, (32, 32), "relu", squash=True)
    assert not torch.equal(first.theta, last.theta)  # gradient steps happened between them
    start = sac.from_sac(sac.build(task, 3, 150))
    assert not torch.equal(start.theta, first.theta)  # learning_starts = 32 < 48: the first point has learned


def test_a_budget_ending_before_sacs_first_gradient_step_is_refused(operator_path: pathlib.Path,
                                                                    tmp_path: pathlib.Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sac, "CONFIG", SACConfig(learning_starts=128))
    with pytest.raises(UserError, match=r"B = 128 env steps .* at 128 env steps.*learning_starts = 128"):
        apply(apply_config(operator_path, tmp_path / "run", methods=["sac"]))
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(sac, "CONFIG", SACConfig(learning_starts=127))
    sac.check_budget(apply_config(operator_path, tmp_path / "run"), OperatorCheckpoint.load(operator_path)[1],
                     191, "halfcheetah_vel")  # last point at 128 > 127: SAC has learned by then


def test_sac_without_stable_baselines3_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"pip install metaimprove\[baselines\]"):
        sac.build(get_family("halfcheetah_vel").task("test", 0), 0, 128)


@pytest.fixture
def pendulum_operator(tmp_path: pathlib.Path) -> pathlib.Path:
    """An untrained operator for Pendulum-v1's policies (obs 3, act 1) whose teacher's batch is 1000 steps."""
    spec = PolicySpec(3, 1)
    op = ImprovementOperator(spec, OperatorConfig())
    teacher = {"name": "ppo", "config": {"n_envs": 2, "n_steps": 500, "minibatch_size": 100, "n_epochs": 1}}
    ckpt = OperatorCheckpoint.from_training(FeatureConfig(), op.config, spec, [1], torch.tensor([[0.0, 0.1]]), [],
                                            teacher)
    ckpt.save(tmp_path / "op.safetensors", op, summary={})
    return tmp_path / "op.safetensors"


def test_sac_learns_pendulum_through_env(pendulum_operator: pathlib.Path, tmp_path: pathlib.Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Where learning is certain: SAC swings Pendulum-v1 up within 6000 env steps (~20 s here), from about -1400.

    SB3's defaults but for the RL Zoo's Pendulum learning rate and a smaller net, to stay fast."""
    monkeypatch.setattr(sac, "CONFIG", SACConfig(learning_rate=1e-3, batch_size=64, net_arch=(64, 64)))
    apply(apply_config(pendulum_operator, tmp_path / "run", env="Pendulum-v1", methods=["sac"], seeds=1,
                       budget=6000, eval_episodes=4))
    points = _sac_curves(curve_rows(tmp_path / "run"))["0"]
    assert [s for s, _ in points] == list(range(0, 6001, 1000))
    start, final = points[0][1], points[-1][1]
    assert start < -900 and final > -300, points


def test_learning_batch_by_batch_is_one_uninterrupted_sac_run(tiny_sac: SACConfig) -> None:
    """Pausing at each point changes nothing, nor does the replay buffer capped at B (it never fills beyond)."""
    task = get_family("halfcheetah_vel").task("test", 0)
    last = list(sac.sac_points(task, seed=1, batch=64, budget=192))[-1]
    model = sac.build(task, 1, 10_000, dataclasses.replace(TINY_SAC, buffer_size=10_000))
    model.learn(192)
    assert model.replay_buffer.buffer_size == 10_000
    assert torch.equal(sac.from_sac(model).theta, last.policy.theta)
