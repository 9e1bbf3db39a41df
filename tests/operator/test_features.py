"""What the operator reads of (θ, τ): per-episode gradients, the baseline, encoding, ES perturbations, env subsets,
task vectors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.func import grad, vmap

from metaimprove.errors import UserError
from metaimprove.operator.features import (
    FeatureConfig,
    advantages,
    encode,
    env_subset,
    next_normalizer,
    per_episode_gradients,
    perturbation_features,
    symlog,
    task_vector,
    transition_dim,
)
from metaimprove.sim.envs import default_task
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, forward, init_params, log_prob
from metaimprove.sim.rollout import Collector, Experience
from metaimprove.sim.tasks import get_family

SPEC = PolicySpec(5, 2, hidden=(8, 8))


def test_per_episode_gradients_match_autograd():
    theta = init_params(SPEC, torch.Generator().manual_seed(0), log_std=-0.3)
    states, actions, adv = torch.randn(50, 3, 5), torch.randn(50, 3, 2), torch.randn(50, 3)
    grads, mean = per_episode_gradients(SPEC, theta, states, actions, adv)
    assert grads.shape == (3, SPEC.n_params)
    for e in range(3):
        leaf = theta.clone().requires_grad_(True)
        mean_e, log_std = forward(SPEC, leaf, states[:, e])
        z = (actions[:, e] - mean_e) / torch.exp(log_std)
        logp = (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        (adv[:, e] * logp).mean().backward()
        torch.testing.assert_close(grads[e], leaf.grad)
        torch.testing.assert_close(mean[:, e], mean_e.detach())


@pytest.mark.parametrize("spec", [PolicySpec(17, 6), PolicySpec(5, 2, (8, 8), "relu"),
                                  PolicySpec(11, 3, (64,), squash=True), PolicySpec(8, 2, (16, 16, 16), "relu", True)],
                         ids=str)
@pytest.mark.parametrize("T,E", [(64, 32), (50, 3), (16, 8), (77, 1)])
def test_per_episode_gradients_are_torch_funcs(spec: PolicySpec, T: int, E: int):
    """The same numbers as ``vmap(grad(surrogate))`` over environments and a plain forward, which the committed
    curves were computed with: bit for bit on the machine that computed them, to float32 rounding on a CPU whose
    kernels round otherwise (an AVX2 machine differs in the last bits; see docs/reproducibility.md)."""
    theta = init_params(spec, torch.Generator().manual_seed(0), log_std=-0.3)
    theta += 0.3 * torch.randn(spec.n_params, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(1)
    states, actions, adv = (torch.randn(T, E, spec.obs_dim, generator=g), torch.randn(T, E, spec.act_dim, generator=g),
                            torch.randn(T, E, generator=g))

    def surrogate(th: torch.Tensor, s: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        mean, log_std = forward(spec, th, s)
        return (w * log_prob(mean, log_std, a)).mean()

    grads, mean = per_episode_gradients(spec, theta, states, actions, adv)
    torch.testing.assert_close(grads, vmap(grad(surrogate), in_dims=(None, 1, 1, 1))(theta, states, actions, adv))
    torch.testing.assert_close(mean, forward(spec, theta, states)[0])


def test_linear_baseline_removes_state_dependent_reward():
    """With reward = linear(state) + noise, the baseline explains the state part: advantages are the noise."""
    spec = PolicySpec(17, 6)
    policy = Policy(spec, init_params(spec, torch.Generator().manual_seed(0)), ObsNormalizer.identity(17))
    exp = Collector(default_task("halfcheetah_vel"), n_envs=4, seed=0).collect(policy, 64)
    g = torch.Generator().manual_seed(0)
    states, noise = torch.randn(64, 4, 17, generator=g), torch.randn(64, 4, generator=g)
    exp.reward = 3.0 * states[..., 0] + 0.1 * noise
    adv = advantages(exp, states, gamma=0.0, ridge=1e-6)
    assert torch.corrcoef(torch.stack([adv.reshape(-1), noise.reshape(-1)]))[0, 1] > 0.9
    assert abs(torch.corrcoef(torch.stack([adv.reshape(-1), states[..., 0].reshape(-1)]))[0, 1]) < 0.1


def test_encode_is_seeded_and_shaped():
    spec = PolicySpec(17, 6)
    policy = Policy(spec, init_params(spec, torch.Generator().manual_seed(0)), ObsNormalizer.identity(17))
    exp = Collector(default_task("halfcheetah_vel"), n_envs=2, seed=0).collect(policy, 64)
    cfg = FeatureConfig(n_transitions=32, n_states=16)
    a = encode(policy, exp, cfg, torch.Generator().manual_seed(1))
    b = encode(policy, exp, cfg, torch.Generator().manual_seed(1))
    assert a["transitions"].shape == (32, transition_dim(spec)) and a["states"].shape == (16, 17)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["grad"].square().mean().item() == pytest.approx(1.0, rel=1e-3)  # unit RMS direction
    # the output's normalizer is the policy's updated with τ, exactly as the PPO teacher does it
    norm = next_normalizer(policy, exp)
    np.testing.assert_allclose(a["norm_mean"].numpy(), norm.mean, rtol=1e-6)
    np.testing.assert_allclose(norm.mean, exp.obs.reshape(-1, 17).double().mean(0).numpy(), atol=1e-3)


@pytest.mark.parametrize("agnostic", [False, True])
def test_reward_symlog_changes_only_the_rewards_the_encoding_reads(agnostic: bool) -> None:
    """With reward_symlog the transitions' reward and ``returns`` read symlog of each reward, and every other
    feature is bit for bit the plain encoding's; rewards 100 times larger then move them by ln(100) at most."""
    spec = PolicySpec(17, 6)
    policy = Policy(spec, init_params(spec, torch.Generator().manual_seed(0)), ObsNormalizer.identity(17))
    exp = Collector(default_task("halfcheetah_vel"), n_envs=4, seed=0).collect(policy, 64)
    plain_cfg = FeatureConfig(n_transitions=32, n_states=16, agnostic=agnostic)
    symlog_cfg = dataclasses.replace(plain_cfg, reward_symlog=True)
    plain, logged = (encode(policy, exp, c, torch.Generator().manual_seed(1)) for c in (plain_cfg, symlog_cfg))
    reward = -3  # the transitions' reward column: (..., reward, advantage, phase)
    torch.testing.assert_close(logged["transitions"][:, reward], symlog(plain["transitions"][:, reward]))
    torch.testing.assert_close(plain["transitions"][:, reward + 1:], logged["transitions"][:, reward + 1:],
                               rtol=0, atol=0)
    per_step = symlog(exp.reward).mean(0)
    torch.testing.assert_close(logged["returns"], torch.stack([per_step.mean(), per_step.std()]))
    assert all(torch.equal(plain[k], logged[k]) for k in plain if k not in ("transitions", "returns"))
    louder = dataclasses.replace(exp, reward=exp.reward * 100)
    loud = encode(policy, louder, symlog_cfg, torch.Generator().manual_seed(1))
    moved = (loud["transitions"][:, reward] - logged["transitions"][:, reward]).abs()
    assert moved.max() <= math.log(100) + 1e-4 and moved.max() > 0


def _experience(returns: list[float], perturbation: torch.Tensor | None) -> Experience:
    E = len(returns)
    reward = torch.tensor(returns).repeat(4, 1) / 4  # 4 steps per env summing to each env's return
    return Experience(obs=torch.zeros(4, E, 3), action=torch.zeros(4, E, 1), log_prob=torch.zeros(4, E),
                      reward=reward, terminated=torch.zeros(4, E, dtype=torch.bool),
                      truncated=torch.zeros(4, E, dtype=torch.bool), trunc_obs=torch.zeros(0, 3),
                      trunc_index=torch.zeros(0, 2, dtype=torch.long), episode_returns=torch.zeros(0), n_unstable=0,
                      perturbation=perturbation)


def test_perturbation_features_pair_each_env_with_its_antithetic_partner() -> None:
    eps = torch.randn(2, 7, generator=torch.Generator().manual_seed(0))
    pert, stats = perturbation_features(_experience([1.0, 4.0, 3.0, 0.0], torch.cat([eps, -eps])), 7)
    assert torch.allclose(pert.square().mean(), torch.tensor(1.0))  # unit RMS
    assert torch.allclose(pert[:2] / pert[:2].norm(), eps / eps.norm())
    z, rank, partner_z, better_rank = stats.unbind(-1)
    assert rank.tolist() == pytest.approx([-1 / 6, 0.5, 1 / 6, -0.5])
    assert torch.equal(partner_z, z[[2, 3, 0, 1]])  # env k ran θ + ε_k, env 2 + k ran θ − ε_k
    # pair 0 is better by max(1, 3) = 3, pair 1 by max(4, 0) = 4: both of a pair share its average rank
    assert better_rank.tolist() == pytest.approx([-1 / 3, 1 / 3, -1 / 3, 1 / 3])
    # Without antithetic pairs every env is its own partner; without perturbations they are zeros.
    _, stats = perturbation_features(_experience([1.0, 4.0, 3.0, 0.0], torch.randn(4, 7)), 7)
    assert torch.equal(stats[:, 2], stats[:, 0]) and torch.equal(stats[:, 3], stats[:, 1])
    pert, _ = perturbation_features(_experience([1.0, 4.0], None), 7)
    assert torch.equal(pert, torch.zeros(2, 7))


def test_env_subset_keeps_whole_antithetic_pairs_and_renumbers_truncations() -> None:
    eps = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    exp = _experience([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], torch.cat([eps, -eps]))
    exp.trunc_obs, exp.trunc_index = torch.randn(6, 3), torch.tensor([[3, e] for e in range(6)])
    sub = env_subset(exp, 4, torch.Generator().manual_seed(1))
    kept = sub.reward.sum(0).round().long().tolist()  # env e's return is e + 1: which envs were kept
    assert len(kept) == 4 and kept[2:] == [k + 3 for k in kept[:2]] and kept == sorted(kept)
    assert sub.perturbation is not None and torch.equal(sub.perturbation[2:], -sub.perturbation[:2])
    assert sub.trunc_index[:, 1].tolist() == [0, 1, 2, 3]
    assert torch.equal(sub.trunc_obs, exp.trunc_obs[[k - 1 for k in kept]])
    again = env_subset(exp, 4, torch.Generator().manual_seed(1))
    assert torch.equal(again.reward, sub.reward)  # seeded
    assert torch.equal(env_subset(exp, 6, torch.Generator()).reward, exp.reward)  # the whole batch, in order
    with pytest.raises(UserError, match="even number of envs"):
        env_subset(exp, 3, torch.Generator())
    with pytest.raises(UserError, match="between 1 and 2"):
        env_subset(_experience([1.0, 2.0], None), 3, torch.Generator())


def test_task_vector_is_the_task_distance_normalization() -> None:
    base = get_family("halfcheetah_vel").task("test", 0)
    phys = base.physics
    task = dataclasses.replace(base, params=(("target_velocity", 0.75),), physics=dataclasses.replace(
        phys, body_mass=(1.5,) * len(phys.body_mass), geom_friction=(1.0,) * len(phys.geom_friction),
        dof_damping=(1.3**-3,) * len(phys.dof_damping), actuator_gear=(1.2,) * len(phys.actuator_gear),
        gravity=1.2**-1))
    # halfcheetah_vel.yaml: v* in U[0, 1.5]; mass 1.5^U[-3, 3], friction 1.5^U[-3, 3], damping 1.3^U[-3, 3],
    # gear 1.2^U[-1, 1], gravity 1.2^U[-1, 1]: each exponent over its range's width, in the family's order.
    expected = ([0.75 / 1.5] + [1 / 6] * len(phys.body_mass) + [0.0] * len(phys.geom_friction)
                + [-3 / 6] * len(phys.dof_damping) + [1 / 2] * len(phys.actuator_gear) + [-1 / 2])
    assert task_vector(task).tolist() == pytest.approx(expected, abs=1e-6)
    assert len(expected) == 34
