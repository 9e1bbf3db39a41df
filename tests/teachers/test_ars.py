"""ARS: the update by hand, a function of (θ, τ); determinism, bookkeeping, learning, refusals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.sim.envs import default_task
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, forward, init_params
from metaimprove.teachers import ARS, ARSConfig, ImprovementRecord
from tests.teachers.common import ARS_SMALL, SMALL, SPEC, run


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


@pytest.mark.parametrize(("directions", "top_b", "n_envs", "kept"),
                         [(32, 16, 16, 4), (8, 4, 4, 1), (8, 8, 4, 2), (8, 1, 2, 1), (16, 8, 32, 8)])
def test_a_resized_ars_keeps_its_share_of_top_directions(directions: int, top_b: int, n_envs: int,
                                                         kept: int) -> None:
    resized = ARS(ARSConfig(n_directions=directions, top_b=top_b, n_steps=64)).resized(n_envs)
    assert (resized.config.n_directions, resized.config.top_b, resized.config.n_steps) == (n_envs // 2, kept, 64)

