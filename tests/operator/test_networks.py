"""The operator's networks: shapes and batching, identity at init, the ES head, the task input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import ENV_STATS, encode, stack, transition_dim
from metaimprove.operator.networks import ImprovementOperator, OperatorConfig, parameter_roles
from metaimprove.sim.envs import default_task
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import Collector
from metaimprove.training.pairs import Pairs
from metaimprove.training.train import TrainConfig, fit
from tests.helpers import ORACLE, TINY_TEACHER, random_features

SPEC = PolicySpec(5, 2, hidden=(8, 8))
CHEETAH = PolicySpec(17, 6)


@pytest.mark.parametrize("arch", ["flat", "per_param"])
def test_forward_shapes_batching_and_identity_at_init(arch):
    op = ImprovementOperator(SPEC, OperatorConfig(arch=arch, hidden=16, context_dim=8, param_hidden=8))
    feats, ask = random_features(SPEC, 3), torch.randn(3, 2)
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


def _es_features(n: int, n_envs: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = SPEC.n_params
    half = torch.randn(n, n_envs // 2, p, generator=g)
    pert = torch.cat([half, -half], dim=1)
    returns = torch.randn(n, n_envs, generator=g)
    z = (returns - returns.mean(1, keepdim=True)) / returns.std(1, keepdim=True)
    partner = torch.arange(n_envs).roll(n_envs // 2)
    stats = torch.stack([z, torch.zeros_like(z), z[:, partner], torch.zeros_like(z)], dim=-1)
    return {"theta": torch.stack([init_params(SPEC, g) for _ in range(n)]),
            "grad": torch.randn(n, p, generator=g), "grad_log_norm": torch.randn(n, 1, generator=g),
            "grad_snr": torch.randn(n, p, generator=g),
            "transitions": torch.randn(n, 16, transition_dim(SPEC), generator=g),
            "returns": torch.randn(n, 2, generator=g), "states": torch.randn(n, 32, SPEC.obs_dim, generator=g),
            "norm_mean": torch.zeros(n, SPEC.obs_dim), "norm_std": torch.ones(n, SPEC.obs_dim),
            "perturbation": pert, "env_returns": stats}


@pytest.mark.parametrize("arch", ["flat", "per_param"])
def test_es_operator_is_the_identity_at_init_and_reads_the_perturbations(arch: str) -> None:
    op = ImprovementOperator(SPEC, OperatorConfig(arch=arch, hidden=16, context_dim=8, param_hidden=8), es=True)
    feats, ask = _es_features(3), torch.randn(3, 2)
    torch.testing.assert_close(op(feats, ask), feats["theta"])
    torch.nn.init.normal_(op.update.es.weight[-1].weight)
    moved = op(feats, ask)
    assert not torch.allclose(moved, feats["theta"])
    still = op({**feats, "perturbation": torch.zeros_like(feats["perturbation"])}, ask)
    assert (still - feats["theta"]).abs().max() < 1e-6  # no perturbations (a PPO batch): no ES step
    assert feats["env_returns"].shape[-1] == ENV_STATS


@pytest.mark.parametrize("es", [False, True])
def test_the_step_is_its_two_terms(es: bool) -> None:
    """forward's Δθ is terms' additive term plus its ES term, bit for bit; without an ES head there is none."""
    config = OperatorConfig(hidden=16, context_dim=8, param_hidden=8, step_scale=1.0)
    op = ImprovementOperator(SPEC, config, es=es)
    for layer in (op.update.rest[-1], *([op.update.es.weight[-1]] if es else [])):
        torch.nn.init.normal_(layer.weight)
    feats, ask = _es_features(3), torch.randn(3, 2)
    context = op.context(feats, ask)
    additive, es_term = op.update.terms(feats, context, SPEC)
    assert (es_term is not None) == es
    step = additive if es_term is None else additive + es_term
    assert torch.equal(op.update(feats, context, SPEC), step)
    assert torch.equal(op(feats, ask), feats["theta"] + step)
    if es_term is not None:
        assert additive.abs().max() > 0 and es_term.abs().max() > 0


def test_es_operator_learns_an_antithetic_es_step_that_the_plain_operator_cannot() -> None:
    # The target is θ + 0.02 Σ_k (r⁺_k − r⁻_k) ε_k: ARS's direction, which is in the perturbations alone.
    n = 300
    feats = _es_features(n)
    z = feats["env_returns"][..., 0]
    step = 0.02 * (z.unsqueeze(-1) * feats["perturbation"]).sum(1) / 2
    idx = torch.arange(n)
    pairs = Pairs(SPEC, feats, feats["theta"] + step, idx, idx, torch.zeros(n, 2),
                  [f"t/{i % 10}" for i in range(n)], {})
    train_idx, val_idx = pairs.select({f"t/{i}" for i in range(8)}), pairs.select({"t/8", "t/9"})
    config = TrainConfig(batch_size=32, lr=3e-3, max_epochs=40, patience=40, param_loss_weight=0.0)
    best = {}
    for es in (False, True):
        torch.manual_seed(0)
        op = ImprovementOperator(SPEC, OperatorConfig(hidden=32, context_dim=8, param_hidden=16), es=es)
        rows = fit(op, pairs, train_idx, val_idx, config)
        best[es] = min(r["val_loss"] for r in rows) / rows[0]["val_identity_loss"]
    assert best[True] < 0.1, best
    assert best[False] > 0.5, best


def test_the_task_changes_the_output_only_with_task_input() -> None:
    task = default_task("halfcheetah_vel")
    other = dataclasses.replace(task, params=(("target_velocity", task.param("target_velocity") + 0.5),))
    policy = Policy(CHEETAH, init_params(CHEETAH, torch.Generator().manual_seed(0)), ObsNormalizer.identity(17))
    exp = Collector(task, n_envs=2, seed=0).collect(policy, 32)
    ask = torch.tensor([[0.0, 0.1]])
    outputs = {}
    for task_input in (True, False):
        config = dataclasses.replace(ORACLE, task_input=task_input)
        ckpt = OperatorCheckpoint.from_training(config, OperatorConfig(hidden=16, context_dim=8, param_hidden=8),
                                                CHEETAH, [1], ask, [], {"name": "ppo", "config": TINY_TEACHER},
                                                "halfcheetah_vel" if task_input else None, 34 if task_input else 0)
        torch.manual_seed(0)
        op = ckpt.new_operator()
        with torch.no_grad():  # an untrained operator returns θ unchanged whatever it reads: give it weights
            for p in op.parameters():
                p.normal_(0.0, 0.3)
        outputs[task_input] = [op(stack([encode(policy, exp, config, torch.Generator().manual_seed(1), t)]), ask)
                               for t in (task, other)]
    with_task, without = outputs[True], outputs[False]
    assert not torch.equal(with_task[0], with_task[1])
    assert torch.equal(without[0], without[1])
