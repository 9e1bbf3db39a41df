"""Training the operator: the behavioural loss, learning a known update, weights per k, seeds, refusals, the oracle."""

from __future__ import annotations

import csv
import math
import pathlib

import pytest
import torch

from metaimprove import cli
from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.networks import ImprovementOperator, OperatorConfig
from metaimprove.sim.policy import PolicySpec
from metaimprove.sim.tasks import TaskConfig
from metaimprove.storage import load_tensors
from metaimprove.training.pairs import PairConfig, Pairs, build_pairs
from metaimprove.training.train import TrainConfig, behavioural_loss, fit, pair_weights, train
from tests.helpers import ORACLE_TRAIN, TINY_TRAIN, random_features

SPEC = PolicySpec(5, 2, hidden=(8, 8))


def test_behavioural_loss_is_zero_only_at_the_target():
    theta = random_features(SPEC, 4)["theta"]
    states = torch.randn(4, 32, SPEC.obs_dim)
    assert behavioural_loss(SPEC, theta, theta, states).abs().max() < 1e-6
    moved = theta + 0.1 * torch.randn_like(theta)
    assert (behavioural_loss(SPEC, moved, theta, states) > 1e-4).all()


def test_behavioural_loss_splits_into_mean_and_log_std_parts():
    theta = random_features(SPEC, 2)["theta"]
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
    items = random_features(SPEC, n_items)
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


def test_same_seed_trains_a_bitwise_identical_operator(reference_dataset: pathlib.Path,
                                                       tmp_path: pathlib.Path) -> None:
    def trained(out: pathlib.Path, seed: int) -> dict[str, torch.Tensor]:
        config = TrainConfig(dataset=str(reference_dataset), out=str(out), max_epochs=2, batch_size=16, seed=seed,
                             operator=OperatorConfig(hidden=16, context_dim=8, param_hidden=8),
                             features=FeatureConfig(n_transitions=32, n_states=32), pairs=PairConfig(ks=[1, 2]))
        return load_tensors(train(config))[0]

    first, again, other = trained(tmp_path / "a", 0), trained(tmp_path / "b", 0), trained(tmp_path / "c", 1)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    files = [tmp_path / run / "operator.safetensors" for run in ("a", "b")]
    assert files[0].read_bytes() == files[1].read_bytes()
    assert not all(torch.equal(first[k], other[k]) for k in first), "the seed changes nothing"
    # The same operator on the same input gives the same θ' (its outputs, not only its weights).
    op_a, _ = OperatorCheckpoint.load(tmp_path / "a" / "operator.safetensors")
    op_b, _ = OperatorCheckpoint.load(tmp_path / "b" / "operator.safetensors")
    pairs = build_pairs(reference_dataset, PairConfig(ks=[1]), FeatureConfig(n_transitions=32, n_states=32))
    feats = {k: v[:4] for k, v in pairs.items.items()}
    ask = torch.zeros(4, 2)
    with torch.no_grad():
        assert torch.equal(op_a(feats, ask), op_b(feats, ask))


def test_es_gradient_on_data_without_perturbations_is_a_one_line_error(reference_dataset: pathlib.Path,
                                                                       tmp_path: pathlib.Path) -> None:
    settings = {**TINY_TRAIN, "features": FeatureConfig(n_transitions=32, n_states=16, es_gradient=True)}
    with pytest.raises(UserError, match=r"record\(s\) no parameter perturbations"):
        train(TrainConfig(dataset=str(reference_dataset), out=str(tmp_path / "op"), **settings))  # type: ignore[arg-type]


def test_cli_trains_on_a_list_of_datasets(reference_dataset: pathlib.Path, other_datasets: dict[str, pathlib.Path],
                                          tmp_path: pathlib.Path) -> None:
    small = ["pairs.ks=[1]", "max_epochs=1", "operator.hidden=16", "features.n_transitions=32"]
    assert cli.main(["train", f"dataset=[{reference_dataset},{other_datasets['copy']}]", f"out={tmp_path / 'u'}",
                     *small]) == 0
    summary = load_tensors(tmp_path / "u" / "operator.safetensors")[1]["summary"]
    assert summary["train_pairs"] == 2 * 4  # both copies of the 2 training tasks × 2 seeds × 1 pair


def _train_oracle(dataset: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """Train as the ``oracle_run`` fixture does."""
    return train(TrainConfig(dataset=str(dataset), out=str(out), **ORACLE_TRAIN))  # type: ignore[arg-type]


def _apply(operator: pathlib.Path, out: pathlib.Path, **changes: object) -> pathlib.Path:
    """The operator alone, on one seed of one halfcheetah_vel task."""
    settings: dict[str, object] = dict(operator_path=str(operator), out=str(out), task=TaskConfig("halfcheetah_vel"),
                                       n_tasks=1, seeds=1, applications=2, eval_episodes=1, workers=1,
                                       methods=["operator"])
    return apply(ApplyConfig(**{**settings, **changes}))  # type: ignore[arg-type]


def test_oracle_operator_trains_applies_and_records_its_family(oracle_run: pathlib.Path,
                                                                tmp_path: pathlib.Path) -> None:
    op, ckpt = OperatorCheckpoint.load(oracle_run / "operator.safetensors")
    assert ckpt.features.task_input and ckpt.task_family == "halfcheetah_vel" and ckpt.task_dim == 34
    assert op.context.head[0].in_features == 2 * 16 + 2 + 1 + 2 + 34
    with (oracle_run / "relabel.csv").open() as f:
        assert [int(r["pairs_added"]) for r in csv.DictReader(f)] == [0, ORACLE_TRAIN["relabel_starts"]]
    with _apply(oracle_run / "operator.safetensors", tmp_path / "apply").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(math.isfinite(float(r["return"])) for r in rows)


def test_oracle_training_is_seeded(reference_dataset: pathlib.Path, oracle_run: pathlib.Path,
                                   tmp_path: pathlib.Path) -> None:
    again = tmp_path / "again"
    _train_oracle(reference_dataset, again)
    for name in ("operator.safetensors", "operator_round0.safetensors", "relabel/round1-0001.safetensors"):
        assert (again / name).read_bytes() == (oracle_run / name).read_bytes(), name
