"""PPO: GAE by hand, gradients against autograd of SB3's loss; determinism, bookkeeping, learning."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.sim.envs import default_task
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, forward, init_params, log_prob
from metaimprove.teachers import PPO, PPOConfig, gae_advantages
from tests.teachers.common import SMALL, SPEC, fresh_policy, run

# One whole episode (256 steps) per env, so that every batch reports a mean return.
WHOLE = PPOConfig(n_envs=2, n_steps=256, n_epochs=2, minibatch_size=64)


def test_gae_by_hand() -> None:
    # Two envs, three steps, γ = λ = 0.5 (so γλ = 0.25).
    # env 0: time limit at t=1, bootstrapped with V = 10; a new episode cut at the batch end, V = 20.
    # env 1: simulator blow-up (terminated) at t=1, no bootstrap; a new episode cut at the batch end, V = 30.
    reward = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)
    value = np.array([[0.5, 1.0], [1.5, 2.0], [2.5, 3.0]], dtype=np.float32)
    terminated = np.array([[False, False], [False, True], [False, False]])
    truncated = np.array([[False, False], [True, False], [True, True]])
    trunc_index = np.array([[1, 0], [2, 0], [2, 1]])
    trunc_value = np.array([10.0, 20.0, 30.0], dtype=np.float32)
    adv = gae_advantages(reward, value, terminated, truncated, trunc_index, trunc_value, gamma=0.5, lam=0.5)
    # env 0: δ2 = 5 + .5·20 - 2.5 = 12.5;  δ1 = 3 + .5·10 - 1.5 = 6.5 (episode end);  δ0 = 1 + .5·1.5 - .5 = 1.25,
    #        A0 = 1.25 + .25·6.5 = 2.875.
    # env 1: δ2 = 6 + .5·30 - 3 = 18;  δ1 = 4 - 2 = 2 (terminated: no future);  δ0 = 2 + .5·2 - 1 = 2, A0 = 2.5.
    expected = np.array([[2.875, 2.5], [6.5, 2.0], [12.5, 18.0]])
    np.testing.assert_allclose(adv, expected, rtol=1e-6)


def test_gae_refuses_episodes_running_past_the_batch() -> None:
    z = np.zeros((2, 1), dtype=np.float32)
    no = np.zeros((2, 1), dtype=bool)
    with pytest.raises(ValueError, match="batch's last step"):
        gae_advantages(z, z, no, no, np.zeros((0, 2), dtype=np.int64), np.zeros(0, np.float32), 0.99, 0.95)


@pytest.mark.parametrize("ent_coef", [0.0, 0.01])
def test_hand_written_gradient_matches_autograd_of_sb3_loss(ent_coef: float) -> None:
    ppo = PPO(PPOConfig(ent_coef=ent_coef))
    gen = torch.Generator().manual_seed(1)
    theta = init_params(SPEC, gen, log_std=-0.3) + 0.3 * torch.randn(SPEC.n_params, generator=gen)
    ppo.start(default_task("halfcheetah_vel"), Policy(SPEC, theta, ObsNormalizer.identity(17)), seed=0)
    rng = np.random.default_rng(0)
    b = 64
    obs = rng.standard_normal((b, 17)).astype(np.float32)
    action = rng.standard_normal((b, 6)).astype(np.float32)
    advantage = rng.standard_normal(b).astype(np.float32)
    returns = rng.standard_normal(b).astype(np.float32)
    flat = torch.cat([theta, ppo.value_params]).double().requires_grad_(True)
    p = SPEC.n_params
    obs_t, act_t = torch.from_numpy(obs).double(), torch.from_numpy(action).double()
    with torch.no_grad():
        now = log_prob(*forward(SPEC, flat[:p], obs_t), act_t)
    # Old log-probs around the current ones so that about half the ratios leave [0.8, 1.2].
    old = (now + torch.from_numpy(rng.uniform(-0.4, 0.4, b))).float()

    grad = ppo.gradient(obs, action, old.numpy(), advantage, returns).copy()

    # SB3's PPO loss, written independently, differentiated by autograd in float64.
    mean, log_std = forward(SPEC, flat[:p], obs_t)
    ratio = torch.exp(log_prob(mean, log_std, act_t) - old.double())
    adv = torch.from_numpy(advantage).double()
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    policy_loss = -torch.min(adv * ratio, adv * ratio.clamp(0.8, 1.2)).mean()
    value = forward(ppo.value_spec, flat[p:], obs_t)[0].squeeze(-1)
    value_loss = torch.nn.functional.mse_loss(torch.from_numpy(returns).double(), value)
    entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum()
    (policy_loss - ent_coef * entropy + 0.5 * value_loss).backward()
    ref = flat.grad.numpy()

    clipped = float(((ratio - 1).abs() > 0.2).double().mean())
    assert 0.2 < clipped < 0.8, "both branches of the clipped surrogate must be exercised"
    assert np.abs(ref[:p]).max() > 1e-2 and np.abs(ref[p:]).max() > 1e-2
    np.testing.assert_allclose(grad, ref, rtol=1e-3, atol=1e-5 * np.abs(ref).max())


def test_same_seed_same_bits_other_seed_differs() -> None:
    a, _ = run(SMALL, seed=3, iterations=3)
    b, _ = run(SMALL, seed=3, iterations=3)
    c, _ = run(SMALL, seed=4, iterations=3)
    assert torch.equal(a.policy.theta, b.policy.theta)
    assert torch.equal(a.value_params, b.value_params)
    assert np.array_equal(a.policy.normalizer.mean, b.policy.normalizer.mean)
    assert not torch.equal(a.policy.theta, c.policy.theta)
    assert not torch.equal(a.value_params, c.value_params)


def test_log_std_init_sets_the_action_noise_and_keeps_the_mean() -> None:
    start = fresh_policy()
    ppo = PPO(PPOConfig(**{**SMALL.__dict__, "log_std_init": -1.0}))
    ppo.start(default_task("halfcheetah_vel"), start, seed=0)
    log_std = SPEC.layout()[-1][2]
    assert torch.equal(ppo.policy.theta[log_std:], torch.full((SPEC.act_dim,), -1.0))
    assert torch.equal(ppo.policy.theta[:log_std], start.theta[:log_std])
    assert torch.equal(start.theta[log_std:], torch.zeros(SPEC.act_dim))  # the caller's policy is left alone


def test_records_chain_and_carry_the_collecting_normalizer() -> None:
    ppo, records = run(WHOLE, seed=0, iterations=3)
    start = fresh_policy()
    assert torch.equal(records[0].policy.theta, start.theta)
    assert records[0].policy.normalizer.count == start.normalizer.count
    for n, rec in enumerate(records):
        assert rec.iteration == n
        assert rec.env_steps == (n + 1) * ppo.steps_per_update == (n + 1) * 2 * 256
        assert rec.experience.n_steps == ppo.steps_per_update
        # τⁿ was collected by θⁿ under the record's normalizer: its log-probs are that policy's.
        torch.testing.assert_close(rec.policy.log_prob(rec.experience.obs, rec.experience.action),
                                   rec.experience.log_prob)
        # θⁿ⁺¹ goes with θⁿ's statistics updated by τⁿ's observations.
        expected = rec.policy.normalizer.copy()
        expected.update(rec.experience.obs.numpy())
        np.testing.assert_array_equal(rec.next_policy.normalizer.mean, expected.mean)
        np.testing.assert_array_equal(rec.next_policy.normalizer.var, expected.var)
        assert rec.next_policy.normalizer.count == expected.count
        assert not torch.equal(rec.next_policy.theta, rec.policy.theta)
        assert len(rec.experience.episode_returns) == 2
        assert math.isfinite(rec.mean_return)
        assert rec.mean_return == pytest.approx(float(rec.experience.episode_returns.mean()))
    for prev, nxt in itertools.pairwise(records):
        assert torch.equal(nxt.policy.theta, prev.next_policy.theta)
        np.testing.assert_array_equal(nxt.policy.normalizer.mean, prev.next_policy.normalizer.mean)
        np.testing.assert_array_equal(nxt.policy.normalizer.var, prev.next_policy.normalizer.var)
    # Snapshots are copies: the teacher moving on does not change what a record holds.
    assert torch.equal(ppo.policy.theta, records[-1].next_policy.theta)
    assert ppo.policy.theta is not records[-1].next_policy.theta


def test_frozen_normalizer_stays_put() -> None:
    policy = fresh_policy()
    policy.normalizer.frozen = True
    ppo = PPO(SMALL)
    (rec,) = ppo.run(default_task("halfcheetah_vel"), policy, 1, seed=0)
    np.testing.assert_array_equal(rec.next_policy.normalizer.mean, np.zeros(17))
    np.testing.assert_array_equal(rec.next_policy.normalizer.var, np.ones(17))


def test_rejects_a_policy_of_the_wrong_shape() -> None:
    spec = PolicySpec(obs_dim=5, act_dim=6)
    policy = Policy(spec, init_params(spec, torch.Generator().manual_seed(0)), ObsNormalizer.identity(5))
    with pytest.raises(UserError, match="obs/act dims"):
        PPO().start(default_task("halfcheetah_vel"), policy, seed=0)


def test_learns_to_hold_still() -> None:
    # Target velocity 0 on nominal physics: standing still with small actions is optimal, and the random
    # start loses ~0.75 per step. Over 10 seeds, 20 updates raised the mean return from about -195 to
    # -130..-145 (a rise of 50-75); with lr = 0 the same run stays within ±15 of its start.
    _, records = run(PPOConfig(), seed=0, iterations=20, target_velocity=0.0)
    returns = np.array([r.mean_return for r in records])
    assert returns[-3:].mean() > returns[:3].mean() + 30, returns.round(1)
