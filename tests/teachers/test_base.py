"""What every teacher does: explore(θ) collects the teacher's own batch from a policy that is not its own; each update
records the teacher's diagnostics."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
import torch

from metaimprove import teachers
from metaimprove.errors import UserError
from metaimprove.sim.envs import default_task
from metaimprove.sim.policy import Policy, forward
from metaimprove.sim.rollout import Collector
from metaimprove.teachers import ARS, PPO, PPOConfig, teacher_option
from tests.teachers.common import ARS_SMALL, SMALL, SPEC, fresh_policy


def test_explore_collects_the_teachers_batch_from_any_policy() -> None:
    # explore(θ) is collect() for a policy that is not the teacher's own: PPO's is the plain collector's batch of
    # θ (the same seed, the same bits), ARS's the antithetic perturbations of θ.
    task = default_task("halfcheetah_vel")
    own, other = fresh_policy(0), fresh_policy(1)
    ppo = PPO(SMALL)
    ppo.start(task, own, seed=4)
    exp = ppo.explore(other)
    expected = Collector(task, SMALL.n_envs, seed=4).collect(other, SMALL.n_steps)
    assert torch.equal(exp.action, expected.action) and exp.perturbation is None
    ars = ARS(ARS_SMALL)
    ars.start(task, own, seed=4)
    exp = ars.explore(other)
    assert exp.perturbation is not None
    obs = other.normalizer.normalize(exp.obs[:, :, None, :])
    mean = forward(SPEC, other.theta + exp.perturbation[0], obs[:, 0])[0][:, 0]
    torch.testing.assert_close(exp.action[:, 0], mean, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("teacher", [PPO(SMALL), ARS(ARS_SMALL)])
def test_teachers_refuse_a_squashed_policy(teacher: PPO | ARS) -> None:
    policy = fresh_policy()
    squashed = Policy(dataclasses.replace(policy.spec, squash=True), policy.theta, policy.normalizer)
    with pytest.raises(UserError, match="squashes its actions"):
        teacher.start(default_task("halfcheetah_vel"), squashed, seed=0)


def test_a_teacher_option_extends_a_registered_teacher(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teachers.resources, "files", lambda package: tmp_path)
    (tmp_path / "fast.yaml").write_text("defaults: [ppo, _self_]\nlr: 0.001\nlog_std_init: -1.0\n")
    teacher = teacher_option("fast")
    assert isinstance(teacher, PPO) and teacher.config == PPOConfig(lr=0.001, log_std_init=-1.0)
    (tmp_path / "typo.yaml").write_text("defaults: [ppo, _self_]\nlearning_rate: 0.001\n")
    with pytest.raises(UserError, match=r"sets \['learning_rate'\], which ppo does not have"):
        teacher_option("typo")
    (tmp_path / "orphan.yaml").write_text("lr: 0.001\n")
    with pytest.raises(UserError, match="must extend one teacher"):
        teacher_option("orphan")
    with pytest.raises(UserError, match="no teacher option 'missing'"):
        teacher_option("missing")


@pytest.mark.parametrize(("teacher", "diagnostics"), [
    (PPO(SMALL), {"approx_kl", "clip_fraction", "explained_variance", "std"}),
    (ARS(ARS_SMALL), {"return_std", "step_size", "step_norm"}),
])
def test_each_update_record_carries_the_teachers_diagnostics(teacher: PPO | ARS, diagnostics: set[str]) -> None:
    records = list(teacher.run(default_task("halfcheetah_vel"), fresh_policy(0), 2, seed=0))
    assert [set(r.stats) for r in records] == [diagnostics] * 2
    assert records[-1].stats == teacher.last_stats and records[0].stats != records[1].stats
    assert all(isinstance(v, float) for r in records for v in r.stats.values())
