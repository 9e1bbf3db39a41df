"""Teachers: PPO (GAE by hand, gradients vs autograd), ARS (update by hand); determinism, bookkeeping, learning."""

from __future__ import annotations

import itertools
import math
import pathlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from conftest import tiny_config

from metaimprove.data.collect import collect
from metaimprove.errors import UserError
from metaimprove.operator.features import FeatureConfig
from metaimprove.sim.envs import default_task
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, forward, init_params, log_prob
from metaimprove.sim.rollout import Collector
from metaimprove.teachers import ARS, PPO, ARSConfig, ImprovementRecord, PPOConfig, gae_advantages
from metaimprove.training.pairs import PairConfig, build_pairs

SPEC = PolicySpec(obs_dim=17, act_dim=6, hidden=(32, 32))
# Short batches (episodes cut at the batch end and bootstrapped) keep the bookkeeping tests fast.
SMALL = PPOConfig(n_envs=4, n_steps=64, n_epochs=2, minibatch_size=64)
# One whole episode (256 steps) per env, so that every batch reports a mean return.
WHOLE = PPOConfig(n_envs=2, n_steps=256, n_epochs=2, minibatch_size=64)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The networks are tiny; extra threads only add overhead on the shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fresh_policy(seed: int = 0) -> Policy:
    return Policy(SPEC, init_params(SPEC, torch.Generator().manual_seed(seed)), ObsNormalizer.identity(SPEC.obs_dim))


def run(config: PPOConfig, seed: int, iterations: int,
        target_velocity: float = 1.0) -> tuple[PPO, list[ImprovementRecord]]:
    ppo = PPO(config)
    task = default_task("halfcheetah_vel", target_velocity=target_velocity)
    return ppo, list(ppo.run(task, fresh_policy(), iterations, seed))


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


# ARS: 3 directions (6 envs) × 32 steps keeps the bookkeeping tests fast.
ARS_SMALL = ARSConfig(n_directions=3, top_b=2, n_steps=32)


def run_ars(config: ARSConfig, seed: int, iterations: int, spec: PolicySpec = SPEC,
            target_velocity: float = 1.0) -> tuple[ARS, list[ImprovementRecord]]:
    ars = ARS(config)
    policy = Policy(spec, init_params(spec, torch.Generator().manual_seed(0)), ObsNormalizer.identity(spec.obs_dim))
    task = default_task("halfcheetah_vel", target_velocity=target_velocity)
    return ars, list(ars.run(task, policy, iterations, seed))


def test_ars_same_seed_same_bits_other_seed_differs() -> None:
    a, _ = run_ars(ARS_SMALL, seed=3, iterations=3)
    b, _ = run_ars(ARS_SMALL, seed=3, iterations=3)
    c, _ = run_ars(ARS_SMALL, seed=4, iterations=3)
    assert torch.equal(a.policy.theta, b.policy.theta)
    assert np.array_equal(a.policy.normalizer.var, b.policy.normalizer.var)
    assert not torch.equal(a.policy.theta, c.policy.theta)


@pytest.mark.parametrize("spec", [SPEC, PolicySpec(obs_dim=17, act_dim=6, hidden=())], ids=["mlp", "linear"])
def test_ars_update_by_hand(spec: PolicySpec) -> None:
    cfg = ARSConfig(n_directions=4, top_b=2, lr=0.05, noise_std=0.1, n_steps=16)
    seed = 5
    ars, (rec,) = run_ars(cfg, seed=seed, iterations=1, spec=spec)
    exp, theta = rec.experience, rec.policy.theta
    n_w = spec.n_params - spec.act_dim
    # The directions are the first draw of the seed's generator, over every weight and bias (not log_std).
    delta = torch.randn(4, n_w, generator=torch.Generator().manual_seed(seed))
    assert exp.obs.shape == (16, 8, 17) and exp.n_steps == ars.steps_per_update == 2 * 4 * 16
    # Env k ran θ + νδ_k and env 4 + k ran θ - νδ_k, deterministically, under θⁿ's (frozen) normalizer.
    obs = rec.policy.normalizer.normalize(exp.obs[:, :, None, :])
    for k in range(4):
        for sign, env in ((1.0, k), (-1.0, 4 + k)):
            perturbed = theta.clone()
            perturbed[:n_w] += sign * 0.1 * delta[k]
            mean = forward(spec, perturbed, obs[:, env])[0][:, 0]
            torch.testing.assert_close(exp.action[:, env], mean, rtol=1e-5, atol=1e-5)
    # τ's log-probs are those of its actions under θⁿ itself.
    torch.testing.assert_close(exp.log_prob, rec.policy.log_prob(exp.obs, exp.action))
    # θ ← θ + α/(b·σ_R) Σ_top (r⁺ - r⁻) δ over the 2 directions with the largest max(r⁺, r⁻).
    r = exp.reward.double().sum(0).numpy()
    plus, minus = r[:4], r[4:]
    top = np.argsort(-np.maximum(plus, minus))[:2]
    sigma = np.concatenate([plus[top], minus[top]]).std(ddof=1)
    expected = theta.double().clone()
    expected[:n_w] += 0.05 / (2 * sigma + 1e-6) * ((plus[top] - minus[top]) @ delta[top].double().numpy())
    torch.testing.assert_close(rec.next_policy.theta.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(rec.next_policy.theta[n_w:], theta[n_w:]), "log_std must not move"
    # θⁿ⁺¹ goes with the statistics updated by every state the perturbed policies visited.
    norm = rec.policy.normalizer.copy()
    norm.update(exp.obs.numpy())
    np.testing.assert_array_equal(rec.next_policy.normalizer.mean, norm.mean)
    np.testing.assert_array_equal(rec.next_policy.normalizer.var, norm.var)


def test_ars_update_is_a_function_of_the_policy_and_the_experience_it_collected() -> None:
    # τ records each env's perturbation, so (θⁿ, τⁿ) alone determine θⁿ⁺¹: a fresh ARS, started elsewhere with
    # another seed, takes the recorded step.
    _, records = run_ars(ARS_SMALL, seed=2, iterations=2)
    rec = records[1]
    n = ARS_SMALL.n_directions
    assert rec.experience.perturbation is not None
    assert torch.equal(rec.experience.perturbation[n:], -rec.experience.perturbation[:n])
    fresh = ARS(ARS_SMALL)
    fresh.start(default_task("halfcheetah_vel", target_velocity=0.3), rec.policy, seed=99)
    assert torch.equal(fresh.improve(rec.experience).theta, rec.next_policy.theta)


def test_ars_refuses_experience_without_its_perturbations() -> None:
    _, records = run(SMALL, seed=0, iterations=1)
    ars = ARS(ARSConfig(n_directions=2, top_b=1, n_steps=SMALL.n_steps))
    ars.start(default_task("halfcheetah_vel"), records[0].policy, seed=0)
    with pytest.raises(UserError, match="antithetic perturbed rollouts"):
        ars.improve(records[0].experience)


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


def test_ars_records_chain() -> None:
    ars, records = run_ars(ARS_SMALL, seed=0, iterations=3)
    for n, rec in enumerate(records):
        assert rec.env_steps == (n + 1) * ars.steps_per_update == (n + 1) * 2 * 3 * 32
    for prev, nxt in itertools.pairwise(records):
        assert torch.equal(nxt.policy.theta, prev.next_policy.theta)
        np.testing.assert_array_equal(nxt.policy.normalizer.var, prev.next_policy.normalizer.var)


def test_ars_learns_to_run() -> None:
    # Target velocity 1 on nominal physics, rollouts of 64 steps: the deterministic start stands still and scores
    # about -65. Over seeds 0-4, 12 updates raised the perturbed rollouts' mean return by 19-28 (last 3 vs first 3
    # updates); with lr = 1e-9 the same runs moved by at most ±0.5.
    _, records = run_ars(ARSConfig(n_directions=8, top_b=4, n_steps=64), seed=0, iterations=12, target_velocity=1.0)
    returns = np.array([float(r.experience.reward.sum(0).mean()) for r in records])
    assert returns[-3:].mean() > returns[:3].mean() + 10, returns.round(1)


@pytest.mark.parametrize(("changes", "message"), [
    ({"top_b": 9}, "top_b must lie in"),
    ({"top_b": 0}, "top_b must lie in"),
    ({"n_directions": 0, "top_b": 0}, "n_directions >= 1"),
    ({"n_steps": 0}, "n_steps >= 1"),
    ({"lr": 0.0}, "lr and noise_std must be positive"),
    ({"noise_std": float("nan")}, "lr and noise_std must be positive"),
])
def test_ars_refuses_bad_config(changes: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        ARS(ARSConfig(**changes))  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_ars_rejects_a_policy_of_the_wrong_shape() -> None:
    spec = PolicySpec(obs_dim=5, act_dim=6)
    policy = Policy(spec, init_params(spec, torch.Generator().manual_seed(0)), ObsNormalizer.identity(5))
    with pytest.raises(UserError, match="obs/act dims"):
        ARS().start(default_task("halfcheetah_vel"), policy, seed=0)


def test_ars_collection_makes_a_dataset_the_pair_builder_reads(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "data"
    collect(tiny_config(out, teacher=ARSConfig(n_directions=2, top_b=1, n_steps=32), n_tasks=2, seeds=1, workers=1))
    pairs = build_pairs(out, PairConfig(ks=[1, 2]), FeatureConfig(n_transitions=32, n_states=32))
    assert pairs.teacher["name"] == "ars"
    assert len(pairs.targets) == 2  # per run, k = 1 from n = 0 (a target θⁿ⁺ᵏ needs its own τⁿ⁺ᵏ)
    assert torch.isfinite(pairs.targets).all()
    assert all(torch.isfinite(v).all() for v in pairs.items.values() if v.is_floating_point())
