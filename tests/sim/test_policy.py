"""Policy: θ layout, batched forward, normalizer, folding."""

import numpy as np
import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, fold_normalizer, forward, init_params

SPEC = PolicySpec(17, 6)


def test_layout_covers_theta_exactly():
    layout = SPEC.layout()
    assert [name for name, _, _ in layout] == ["W0", "b0", "W1", "b1", "W2", "b2", "log_std"]
    assert SPEC.n_params == 17 * 32 + 32 + 32 * 32 + 32 + 32 * 6 + 6 + 6
    end = layout[-1][2] + layout[-1][1][0]
    assert end == SPEC.n_params


def test_init_is_seeded():
    a = init_params(SPEC, torch.Generator().manual_seed(1))
    b = init_params(SPEC, torch.Generator().manual_seed(1))
    c = init_params(SPEC, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    w0 = SPEC.unflatten(a)["W0"]
    torch.testing.assert_close(w0.T @ w0, 2.0 * torch.eye(17), atol=1e-5, rtol=0)  # orthogonal columns, gain √2


def test_batched_forward_equals_one_at_a_time():
    thetas = torch.stack([init_params(SPEC, torch.Generator().manual_seed(s)) for s in range(4)])
    obs = torch.randn(4, 10, 17)
    mean, log_std = forward(SPEC, thetas, obs)
    assert mean.shape == (4, 10, 6) and log_std.shape == (4, 1, 6)
    for i in range(4):
        single, _ = forward(SPEC, thetas[i], obs[i])
        torch.testing.assert_close(mean[i], single)


def test_numpy_actor_matches_torch_forward():
    theta = init_params(SPEC, torch.Generator().manual_seed(0)) + 0.1 * torch.randn(SPEC.n_params)
    norm = ObsNormalizer(np.random.default_rng(0).normal(size=17), np.random.default_rng(1).uniform(0.5, 2, 17))
    policy = Policy(SPEC, theta, norm)
    obs = np.random.default_rng(2).normal(size=(5, 17))
    expected, _ = forward(SPEC, theta, norm.normalize(obs))
    np.testing.assert_allclose(policy.actor().mean(obs), expected.numpy(), atol=1e-5)


def test_normalizer_matches_batch_statistics():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(1000, 17))
    norm = ObsNormalizer.identity(17)
    for chunk in np.split(x, 10):
        norm.update(chunk)
    np.testing.assert_allclose(norm.mean, x.mean(0), atol=1e-3)
    np.testing.assert_allclose(norm.var, x.var(0), rtol=1e-3)


def test_folding_the_normalizer_preserves_the_policy():
    theta = init_params(SPEC, torch.Generator().manual_seed(0), log_std=-0.5).double()
    rng = np.random.default_rng(0)
    norm = ObsNormalizer(rng.normal(size=17), rng.uniform(0.5, 3.0, 17))
    canonical = ObsNormalizer(rng.normal(size=17), rng.uniform(0.5, 3.0, 17))
    folded = fold_normalizer(SPEC, theta, norm, canonical)
    obs = rng.normal(size=(64, 17))  # within the clip range of both normalizers
    before, _ = forward(SPEC, theta, norm.normalize(obs).double())
    after, _ = forward(SPEC, folded, canonical.normalize(obs).double())
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)


def test_wrong_theta_size_is_a_clear_error():
    with pytest.raises(UserError, match=f"needs {SPEC.n_params}"):
        SPEC.unflatten(torch.zeros(10))
    with pytest.raises(UserError, match="unknown activation"):
        PolicySpec(17, 6, activation="gelu2")


def test_policy_file_round_trip_and_refusals(tmp_path):
    from metaimprove.sim.policy import load_policy, save_policy

    rng = np.random.default_rng(0)
    policy = Policy(SPEC, init_params(SPEC, torch.Generator().manual_seed(3)),
                    ObsNormalizer(rng.normal(size=17), rng.uniform(0.5, 2.0, 17), count=42.0))
    save_policy(tmp_path / "p.safetensors", policy)
    again = load_policy(tmp_path / "p.safetensors")
    assert again.spec == SPEC and torch.equal(again.theta, policy.theta) and again.normalizer.count == 42.0
    np.testing.assert_array_equal(again.normalizer.var, policy.normalizer.var)
    bad = Policy(SPEC, policy.theta.clone(), policy.normalizer)
    bad.theta[5] = float("nan")
    save_policy(tmp_path / "nan.safetensors", bad)
    with pytest.raises(UserError, match="non-finite"):
        load_policy(tmp_path / "nan.safetensors")


# ------------------------------------------------------------------------------------------ squashed policies

SQUASHED = PolicySpec(17, 6, (32, 16), "relu", squash=True)


def _big_policy(spec: PolicySpec) -> Policy:
    """Outputs well past ±1, so that the squash matters."""
    theta = init_params(spec, torch.Generator().manual_seed(7), log_std=-1.0)
    spec.unflatten(theta)["W2"].mul_(300.0)
    rng = np.random.default_rng(1)
    return Policy(spec, theta, ObsNormalizer(rng.normal(size=17), rng.uniform(0.5, 2.0, 17)))


def test_a_squashed_policy_acts_with_the_tanh_of_its_unsquashed_mean():
    policy = _big_policy(SQUASHED)
    plain = Policy(PolicySpec(17, 6, (32, 16), "relu"), policy.theta, policy.normalizer)
    obs = np.random.default_rng(2).normal(size=(32, 17))
    raw = plain.actor().mean(obs)
    assert np.abs(raw).max() > 3.0
    np.testing.assert_allclose(policy.actor().mean(obs), np.tanh(raw), rtol=1e-12)
    mean, _ = forward(SQUASHED, policy.theta.double(), policy.normalizer.normalize(obs).double())
    np.testing.assert_allclose(mean.numpy(), np.tanh(raw), atol=1e-6)  # torch forward (log-densities) agrees
    batched = Policy(SQUASHED, policy.theta.expand(32, -1), policy.normalizer).actor().mean(obs)
    np.testing.assert_allclose(batched, np.tanh(raw), rtol=1e-12)  # a batch of θs (ARS) too


def test_squash_round_trips_and_unsquashed_specs_keep_their_bytes(tmp_path):
    from metaimprove.sim.policy import load_policy, save_policy

    policy = _big_policy(SQUASHED)
    save_policy(tmp_path / "sq.safetensors", policy)
    again = load_policy(tmp_path / "sq.safetensors")
    assert again.spec == SQUASHED and torch.equal(again.theta, policy.theta)
    obs = np.random.default_rng(3).normal(size=(8, 17))
    np.testing.assert_array_equal(again.actor().mean(obs), policy.actor().mean(obs))
    assert SQUASHED.to_dict()["squash"] is True
    assert "squash" not in SPEC.to_dict()  # every file written before squash existed keeps its bytes
    assert PolicySpec.from_dict(SPEC.to_dict()) == SPEC and not PolicySpec.from_dict(SPEC.to_dict()).squash
    with pytest.raises(UserError, match="squash must be true or false"):
        PolicySpec.from_dict({**SPEC.to_dict(), "squash": "yes"})


def test_a_shipped_policy_file_loads_and_saves_unchanged(tmp_path):
    from pathlib import Path

    from metaimprove.sim.policy import load_policy, save_policy

    shipped = Path(__file__).parents[2] / "results" / "operators" / "halfcheetah_vel.dr.safetensors"
    if not shipped.exists():
        pytest.skip("no shipped DR policy in this checkout")
    policy = load_policy(shipped)
    assert not policy.spec.squash
    save_policy(tmp_path / "again.safetensors", policy)
    assert (tmp_path / "again.safetensors").read_bytes() == shipped.read_bytes()
