"""Operator: shapes and batching, the behavioural loss, learning a known update, checkpoints, features."""

import json
import math

import numpy as np
import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.operator.checkpoint import OperatorCheckpoint, default_ask_k
from metaimprove.operator.features import (
    FeatureConfig,
    advantages,
    encode,
    next_normalizer,
    per_episode_gradients,
    transition_dim,
)
from metaimprove.operator.networks import ImprovementOperator, OperatorConfig, parameter_roles
from metaimprove.sim.envs import default_task
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, forward, init_params
from metaimprove.sim.rollout import Collector
from metaimprove.storage import meta_path
from metaimprove.training.pairs import Pairs
from metaimprove.training.train import TrainConfig, behavioural_loss, fit, pair_weights, train

SPEC = PolicySpec(5, 2, hidden=(8, 8))


def _features(n: int, seed: int = 0, m: int = 16, s: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = SPEC.n_params
    return {
        "theta": torch.stack([init_params(SPEC, g) for _ in range(n)]),
        "grad": torch.randn(n, p, generator=g),
        "grad_log_norm": torch.randn(n, 1, generator=g),
        "transitions": torch.randn(n, m, transition_dim(SPEC), generator=g),
        "returns": torch.randn(n, 2, generator=g),
        "grad_snr": torch.randn(n, p, generator=g),
        "states": torch.randn(n, s, SPEC.obs_dim, generator=g),
        "norm_mean": torch.zeros(n, SPEC.obs_dim),
        "norm_std": torch.ones(n, SPEC.obs_dim),
    }


@pytest.mark.parametrize("arch", ["flat", "per_param"])
def test_forward_shapes_batching_and_identity_at_init(arch):
    op = ImprovementOperator(SPEC, OperatorConfig(arch=arch, hidden=16, context_dim=8, param_hidden=8))
    feats, ask = _features(3), torch.randn(3, 2)
    out = op(feats, ask)
    assert out.shape == (3, SPEC.n_params)
    torch.testing.assert_close(out, feats["theta"])  # zero-initialized update head: θ' = θ before training
    torch.nn.init.normal_(op.update.net[-1].weight if arch == "flat" else op.update.rest[-1].weight)
    out = op(feats, ask)
    assert not torch.allclose(out, feats["theta"])
    for i in range(3):
        single = op({k: v[i : i + 1] for k, v in feats.items()}, ask[i : i + 1])
        torch.testing.assert_close(single[0], out[i], atol=1e-5, rtol=1e-5)


def test_unknown_architecture_is_refused():
    with pytest.raises(UserError, match="unknown operator architecture 'mlp'"):
        ImprovementOperator(SPEC, OperatorConfig(arch="mlp"))


def test_parameter_roles_follow_the_layout():
    block, inp, out = parameter_roles(SPEC)
    layout = {name: (shape, off) for name, shape, off in SPEC.layout()}
    (_, cols), off = layout["W0"]
    assert inp[off : off + cols].tolist() == list(range(cols)) and inp[off + cols] == 0
    (_, cols), off = layout["W2"]
    assert out[off : off + cols].tolist() == [0] * cols and out[off + cols] == 1
    assert (out[layout["W1"][1] : layout["b1"][1]] == SPEC.act_dim).all()  # hidden weights drive no action
    assert block[-1] == len(layout) - 1


def test_behavioural_loss_is_zero_only_at_the_target():
    theta = _features(4)["theta"]
    states = torch.randn(4, 32, SPEC.obs_dim)
    assert behavioural_loss(SPEC, theta, theta, states).abs().max() < 1e-6
    moved = theta + 0.1 * torch.randn_like(theta)
    assert (behavioural_loss(SPEC, moved, theta, states) > 1e-4).all()


def test_behavioural_loss_splits_into_mean_and_log_std_parts():
    theta = _features(2)["theta"]
    states = torch.randn(2, 32, SPEC.obs_dim)
    std_only = theta.clone()
    std_only[:, -SPEC.act_dim:] += 0.3  # log_std is the last block: same mean actions, wider distribution
    assert behavioural_loss(SPEC, std_only, theta, states, mean_weight=1.0, std_weight=0.0).abs().max() < 1e-6
    assert (behavioural_loss(SPEC, std_only, theta, states, mean_weight=0.0, std_weight=1.0) > 1e-3).all()
    moved = theta + 0.1 * torch.randn_like(theta)
    full = behavioural_loss(SPEC, moved, theta, states)
    parts = (behavioural_loss(SPEC, moved, theta, states, 1.0, 0.0)
             + behavioural_loss(SPEC, moved, theta, states, 0.0, 1.0))
    torch.testing.assert_close(full, parts)
    torch.testing.assert_close(behavioural_loss(SPEC, moved, theta, states, 2.0, 2.0), 2 * full)
    # the mean error is measured in the target's noise: a prediction cannot hide it by widening its own
    wider = moved.clone()
    wider[:, -SPEC.act_dim:] += 1.0
    torch.testing.assert_close(behavioural_loss(SPEC, wider, theta, states, 1.0, 0.0),
                               behavioural_loss(SPEC, moved, theta, states, 1.0, 0.0))
    assert (behavioural_loss(SPEC, wider, theta, states) > full).all()


def _synthetic_pairs(n_items: int, delta_scale: float) -> Pairs:
    """Pairs whose right update is known: θ' = θ + delta_scale · ĝ · (1 + ask_k)."""
    items = _features(n_items)
    ask = torch.stack([torch.randint(0, 3, (n_items,)).float(), torch.zeros(n_items)], dim=1)
    targets = items["theta"] + delta_scale * items["grad"] * (1 + ask[:, :1])
    idx = torch.arange(n_items)
    return Pairs(SPEC, items, targets, idx, idx, ask, [f"t/{i % 10}" for i in range(n_items)], {})


def test_training_learns_a_known_update():
    pairs = _synthetic_pairs(400, delta_scale=0.02)
    train_idx, val_idx = pairs.select({f"t/{i}" for i in range(8)}), pairs.select({"t/8", "t/9"})
    torch.manual_seed(0)
    op = ImprovementOperator(SPEC, OperatorConfig(arch="per_param", hidden=32, context_dim=8, param_hidden=16))
    config = TrainConfig(batch_size=32, lr=3e-3, max_epochs=60, patience=60, param_loss_weight=0.0)
    rows = fit(op, pairs, train_idx, val_idx, config)
    identity = rows[0]["val_identity_loss"]
    assert identity > 0.01
    assert min(r["val_loss"] for r in rows) < 0.05 * identity


def test_normalize_by_k_weighs_every_k_equally():
    pairs = _synthetic_pairs(300, delta_scale=0.02)
    train_idx = pairs.select({f"t/{i}" for i in range(8)})
    plain = pair_weights(pairs, train_idx, TrainConfig(param_loss_weight=0.0, normalize_by_k=False))
    assert torch.equal(plain, torch.ones(300))
    config = TrainConfig(param_loss_weight=0.0, normalize_by_k=True)
    weight = pair_weights(pairs, train_idx, config)
    feats, _, target, states = pairs.batch(train_idx)
    identity = behavioural_loss(SPEC, feats["theta"], target, states) * weight[train_idx]
    log_k = pairs.ask[train_idx, 0]
    per_k = [float(identity[log_k == v].mean()) for v in log_k.unique()]
    assert len(per_k) == 3 and per_k == pytest.approx([1.0] * 3, rel=1e-4)
    assert weight[pairs.ask[:, 0] == 0].mean() > 2 * weight[pairs.ask[:, 0] == 2].mean()  # far targets weigh less


def test_checkpoint_round_trip_is_exact(tmp_path):
    op = ImprovementOperator(SPEC, OperatorConfig(hidden=16, context_dim=8, param_hidden=8))
    torch.nn.init.normal_(op.update.rest[-1].weight)
    asks = torch.tensor([[0.0, 0.1], [0.0, 0.2], [1.0, 0.3], [1.0, 0.5]])
    ckpt = OperatorCheckpoint.from_training(FeatureConfig(), op.config, SPEC, [1, 2], asks,
                                            ["a/train/0"], {"name": "ppo", "config": {}})
    path = tmp_path / "op.safetensors"
    ckpt.save(path, op, summary={"val_loss": 0.5})
    op2, ckpt2 = OperatorCheckpoint.load(path)
    feats, ask = _features(2), torch.randn(2, 2)
    torch.testing.assert_close(op2(feats, ask), op(feats, ask), atol=0, rtol=0)
    assert ckpt2.spec == SPEC and ckpt2.ks == [1, 2] and ckpt2.tasks == ["a/train/0"]
    assert ckpt2.default_ask()[0] == 1.0  # no recorded ask: the trained k nearest 2, log2(2)
    with pytest.warns(UserWarning, match="outside the trained range"):
        ckpt2.default_ask(k=64)


def test_without_a_recorded_ask_the_trained_jump_nearest_two_is_asked_for():
    # Not the largest: far jumps drift (see DEFAULT_ASK_K); ties go to the smaller jump.
    assert [default_ask_k(ks) for ks in ([1, 2, 4, 8], [1, 4], [4, 8, 16], [8], [1])] == [2, 1, 4, 8, 1]


def test_a_recorded_ask_k_is_the_default_ask_and_a_forged_one_is_refused(tmp_path):
    op = ImprovementOperator(SPEC, OperatorConfig(hidden=16, context_dim=8, param_hidden=8))
    asks = torch.tensor([[0.0, 0.1], [1.0, 0.3], [2.0, 0.5]])
    ckpt = OperatorCheckpoint.from_training(FeatureConfig(), op.config, SPEC, [1, 2, 4], asks, ["a/train/0"],
                                            {"name": "ppo", "config": {}}, ask_k=4)
    path = tmp_path / "op.safetensors"
    ckpt.save(path, op, summary={})
    _, loaded = OperatorCheckpoint.load(path)
    assert loaded.default_ask()[0] == 2.0 and loaded.default_ask(k=1)[0] == 0.0  # log2(4), not the default 2; told
    header = json.loads(meta_path(path).read_text())
    for forged in (3, "2"):
        meta_path(path).write_text(json.dumps({**header, "meta": {**header["meta"], "ask_k": forged}}))
        with pytest.raises(UserError, match="ask_k must be one of ks"):
            OperatorCheckpoint.load(path)
    with pytest.raises(UserError, match=r"ask_k=3 is not a trained jump; give one of pairs.ks \[1, 2, 4, 8\]"):
        train(TrainConfig(dataset=str(tmp_path), out=str(tmp_path / "op"), ask_k=3))


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError):
        OperatorCheckpoint.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(UserError):
        OperatorCheckpoint.load(bad)


def test_per_episode_gradients_match_autograd():
    theta = init_params(SPEC, torch.Generator().manual_seed(0), log_std=-0.3)
    states, actions, adv = torch.randn(50, 3, 5), torch.randn(50, 3, 2), torch.randn(50, 3)
    grads = per_episode_gradients(SPEC, theta, states, actions, adv)
    assert grads.shape == (3, SPEC.n_params)
    for e in range(3):
        leaf = theta.clone().requires_grad_(True)
        mean, log_std = forward(SPEC, leaf, states[:, e])
        z = (actions[:, e] - mean) / torch.exp(log_std)
        logp = (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        (adv[:, e] * logp).mean().backward()
        torch.testing.assert_close(grads[e], leaf.grad)


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


def test_checkpoint_from_an_incompatible_version_is_refused(tmp_path):
    op = ImprovementOperator(SPEC, OperatorConfig(hidden=16, context_dim=8, param_hidden=8))
    ckpt = OperatorCheckpoint.from_training(FeatureConfig(), op.config, SPEC, [1], torch.tensor([[0.0, 0.1]]), [],
                                            {"name": "ppo", "config": {}})
    path = tmp_path / "op.safetensors"
    ckpt.save(path, op, summary={})
    header = json.loads((tmp_path / "op.json").read_text())
    header["meta"]["format_version"] = 99
    (tmp_path / "op.json").write_text(json.dumps(header))
    with pytest.raises(UserError, match="format version 99 is not supported"):
        OperatorCheckpoint.load(path)
