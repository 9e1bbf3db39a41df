"""The shape-agnostic operator (features.agnostic): one set of weights for policies of any spec, blind to which
observation is which."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.operator.features import AGNOSTIC_TRANSITION_DIM, FeatureConfig, check_features, encode, stack
from metaimprove.operator.networks import ImprovementOperator, OperatorConfig
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import Experience

FEATURES = FeatureConfig(n_transitions=32, n_states=16, es_gradient=True, agnostic=True)
CONFIG = OperatorConfig(hidden=16, context_dim=8, param_hidden=8)
BUILT_FOR = PolicySpec(17, 6)  # halfcheetah_vel's
OTHERS = [PolicySpec(11, 3), PolicySpec(11, 3, hidden=(64,)), PolicySpec(17, 6, hidden=(16, 16, 16))]
ASK = torch.tensor([[1.0, 0.05]])


def _random_operator(spec: PolicySpec, features: FeatureConfig) -> ImprovementOperator:
    """An operator with random weights everywhere (the output layers too, so that its steps move θ)."""
    op = ImprovementOperator(spec, CONFIG, es=True, agnostic=features.agnostic)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in op.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return op.eval()


def _batch(spec: PolicySpec, seed: int, T: int = 32, E: int = 4) -> tuple[Policy, Experience]:
    """A policy of ``spec`` with a non-trivial normalizer and an ARS-like batch of antithetic perturbations."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    policy = Policy(spec, init_params(spec, g),
                    ObsNormalizer(rng.normal(size=spec.obs_dim), rng.uniform(0.5, 2.0, spec.obs_dim), 100.0))
    half = 0.02 * torch.randn(E // 2, spec.n_params, generator=g)
    done = torch.zeros(T, E, dtype=torch.bool)
    done[T // 2, 0] = True
    exp = Experience(obs=torch.randn(T, E, spec.obs_dim, generator=g),
                     action=torch.randn(T, E, spec.act_dim, generator=g),
                     log_prob=torch.randn(T, E, generator=g), reward=torch.randn(T, E, generator=g),
                     terminated=done, truncated=torch.zeros(T, E, dtype=torch.bool),
                     trunc_obs=torch.zeros(0, spec.obs_dim), trunc_index=torch.zeros(0, 2, dtype=torch.long),
                     episode_returns=torch.zeros(0), n_unstable=0, perturbation=torch.cat([half, -half]))
    return policy, exp


def _step(op: ImprovementOperator, policy: Policy, exp: Experience, features: FeatureConfig) -> torch.Tensor:
    feats = encode(policy, exp, features, torch.Generator().manual_seed(0))
    with torch.no_grad():
        return op(stack([feats]), ASK, policy.spec)[0]


@pytest.mark.parametrize("spec", [BUILT_FOR, *OTHERS], ids=str)
def test_one_operator_improves_policies_of_any_spec(spec: PolicySpec) -> None:
    op = _random_operator(BUILT_FOR, FEATURES)
    policy, exp = _batch(spec, seed=2)
    feats = encode(policy, exp, FEATURES, torch.Generator().manual_seed(0))
    assert feats["transitions"].shape == (32, AGNOSTIC_TRANSITION_DIM)
    theta = _step(op, policy, exp, FEATURES)
    assert theta.shape == (spec.n_params,) and torch.isfinite(theta).all()
    assert (theta - policy.theta).abs().max() > 1e-3  # it steps, not returns θ


def test_its_weights_do_not_depend_on_the_spec_it_was_built_for() -> None:
    shapes = {spec: {k: v.shape for k, v in ImprovementOperator(spec, CONFIG, es=True, agnostic=True)
                     .state_dict().items()} for spec in [BUILT_FOR, *OTHERS]}
    assert all(s == shapes[BUILT_FOR] for s in shapes.values())
    # built for another spec and given its weights, it takes the same steps
    other = ImprovementOperator(OTHERS[1], CONFIG, es=True, agnostic=True)
    op = _random_operator(BUILT_FOR, FEATURES)
    other.load_state_dict(op.state_dict())
    policy, exp = _batch(OTHERS[0], seed=3)
    torch.testing.assert_close(_step(other.eval(), policy, exp, FEATURES), _step(op, policy, exp, FEATURES))


def _permute_obs(policy: Policy, exp: Experience, perm: torch.Tensor) -> tuple[Policy, Experience]:
    """The same robot with its observation entries listed in another order: obs, normalizer, the first layer's
    columns and the perturbations of those columns all permuted alike."""
    spec = policy.spec

    def columns(theta: torch.Tensor) -> torch.Tensor:
        blocks = spec.unflatten(theta)
        blocks["W0"] = blocks["W0"][..., perm]
        return torch.cat([blocks[name].reshape(*theta.shape[:-1], -1) for name, _, _ in spec.layout()], dim=-1)

    norm = ObsNormalizer(policy.normalizer.mean[perm.numpy()], policy.normalizer.var[perm.numpy()],
                         policy.normalizer.count)
    assert exp.perturbation is not None
    moved = Experience(obs=exp.obs[..., perm], action=exp.action, log_prob=exp.log_prob, reward=exp.reward,
                       terminated=exp.terminated, truncated=exp.truncated, trunc_obs=exp.trunc_obs[:, perm],
                       trunc_index=exp.trunc_index, episode_returns=exp.episode_returns, n_unstable=exp.n_unstable,
                       perturbation=columns(exp.perturbation))
    return Policy(spec, columns(policy.theta), norm), moved


@pytest.mark.parametrize("agnostic", [True, False], ids=["agnostic", "per_family"])
def test_reordering_the_observation_reorders_the_step_only_when_agnostic(agnostic: bool) -> None:
    spec = PolicySpec(11, 3, hidden=(24, 24))
    features = FeatureConfig(n_transitions=32, n_states=16, es_gradient=True, agnostic=agnostic)
    op = _random_operator(spec, features)
    policy, exp = _batch(spec, seed=4)
    perm = torch.randperm(spec.obs_dim, generator=torch.Generator().manual_seed(5))
    moved_policy, moved_exp = _permute_obs(policy, exp, perm)
    expected = _permute_obs(Policy(spec, _step(op, policy, exp, features), policy.normalizer), exp, perm)[0].theta
    got = _step(op, moved_policy, moved_exp, features)
    gap = float((got - expected).abs().max())
    step = float((expected - moved_policy.theta).abs().max())
    if agnostic:
        assert step > 1e-3 and gap < 1e-3 * step
    else:  # the control: a per-family operator reads which observation is which, so the test can fail
        assert gap > 1e-3


def test_a_per_family_operator_refuses_another_spec() -> None:
    op = _random_operator(BUILT_FOR, FeatureConfig(n_transitions=32, n_states=16, es_gradient=True))
    policy, exp = _batch(OTHERS[0], seed=6)
    feats = encode(policy, exp, FeatureConfig(n_transitions=32, n_states=16, es_gradient=True),
                   torch.Generator().manual_seed(0))
    with pytest.raises(UserError, match=r"only a shape-agnostic operator \(features.agnostic=true\)"):
        op(stack([feats]), ASK, policy.spec)


@pytest.mark.parametrize(("features", "arch", "message"), [
    (FeatureConfig(agnostic=True), "flat", "needs operator.arch=per_param"),
    (FeatureConfig(agnostic=True, task_input=True), "per_param", "a task vector means something else"),
])
def test_settings_an_agnostic_operator_cannot_have_are_refused(features: FeatureConfig, arch: str,
                                                               message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        check_features(features, arch)
    assert "\n" not in str(err.value)
    check_features(FeatureConfig(), arch)  # the per-family default takes any architecture
