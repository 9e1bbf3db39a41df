"""Training the operator: the behavioural loss, learning a known update, weights per k, seeds, refusals, the oracle,
resuming, devices, one writer per out, logs."""

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
from metaimprove.training import train as train_module
from metaimprove.training.pairs import PairConfig, Pairs, build_pairs
from metaimprove.training.train import TrainConfig, behavioural_loss, fit, pair_weights, train
from tests.helpers import ORACLE_TRAIN, TINY_TRAIN, held_by_another_process, random_features

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
    for name in ("operator.safetensors", "operator_round0.safetensors", "operator_round1.safetensors"):
        assert load_tensors(oracle_run / name)[1]["summary"]["complete"] is True, name
    with _apply(oracle_run / "operator.safetensors", tmp_path / "apply").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(math.isfinite(float(r["return"])) for r in rows)


def test_oracle_training_is_seeded(reference_dataset: pathlib.Path, oracle_run: pathlib.Path,
                                   tmp_path: pathlib.Path) -> None:
    again = tmp_path / "again"
    _train_oracle(reference_dataset, again)
    for name in ("operator.safetensors", "operator_round0.safetensors", "relabel/round1-0001.safetensors"):
        assert (again / name).read_bytes() == (oracle_run / name).read_bytes(), name


# ------------------------------------------------------------------------------------------ resume, devices, logs


def _resumable(dataset: pathlib.Path, out: pathlib.Path, **changes: object) -> TrainConfig:
    settings = {**TINY_TRAIN, "max_epochs": 5, "patience": 100, "batch_size": 2, **changes}
    return TrainConfig(dataset=str(dataset), out=str(out), **settings)  # type: ignore[arg-type]


def _count_epochs(monkeypatch: pytest.MonkeyPatch, interrupt_at: int | None = None) -> list[int]:
    """Count the epochs trained (one validation each) in the returned list; with ``interrupt_at``, stop training
    with a KeyboardInterrupt in that epoch (counted from 1)."""
    epochs: list[int] = []
    real = train_module._evaluate

    def counted(*args: object, **kwargs: object) -> float:
        epochs.append(len(epochs) + 1)
        if epochs[-1] == interrupt_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "_evaluate", counted)
    return epochs


def _metrics(out: pathlib.Path) -> list[dict[str, str]]:
    with (out / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_an_interrupted_train_resumes_to_the_same_weights(reference_dataset: pathlib.Path, tmp_path: pathlib.Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    whole = train(_resumable(reference_dataset, tmp_path / "whole"))
    with monkeypatch.context() as patch:
        _count_epochs(patch, interrupt_at=3)
        with pytest.raises(KeyboardInterrupt):
            train(_resumable(reference_dataset, tmp_path / "part"))
    # metrics.csv grows an epoch at a time; the checkpoint says it is the best so far of an unfinished run.
    assert [r["epoch"] for r in _metrics(tmp_path / "part")] == ["0", "1"]
    assert load_tensors(tmp_path / "part" / "operator.safetensors")[1]["summary"]["complete"] is False
    epochs = _count_epochs(monkeypatch)
    resumed = train(_resumable(reference_dataset, tmp_path / "part"))
    assert epochs == [1, 2, 3]  # epochs 2, 3 and 4: none done twice
    ours, theirs = load_tensors(resumed), load_tensors(whole)
    assert ours[0].keys() == theirs[0].keys() and all(torch.equal(ours[0][k], theirs[0][k]) for k in ours[0])
    assert ours[1] == theirs[1] and ours[1]["summary"]["complete"] is True
    assert resumed.read_bytes() == whole.read_bytes()
    assert _metrics(tmp_path / "part") == _metrics(tmp_path / "whole")
    # A finished fit rerun trains nothing more and writes the same checkpoint.
    train(_resumable(reference_dataset, tmp_path / "part"))
    assert epochs == [1, 2, 3] and resumed.read_bytes() == whole.read_bytes()


def test_resuming_with_other_settings_is_refused(reference_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    train(_resumable(reference_dataset, tmp_path / "run", max_epochs=1))
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(UserError, match=r"other settings \(lr: 0.001 there, 0.002 now\)") as info:
        train(_resumable(reference_dataset, tmp_path / "run", max_epochs=1, lr=2e-3))
    assert "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before  # the log included
    # Where it runs and what it reports are no part of the settings.
    train(_resumable(reference_dataset, tmp_path / "run", max_epochs=1, device="auto", logger="csv"))


def test_a_second_train_into_the_same_out_is_refused(reference_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with held_by_another_process(tmp_path / "out") as out, \
            pytest.raises(UserError, match=r"being written by another process \(train refuses"):
        train(_resumable(reference_dataset, out))
    assert list(out.iterdir()) == []


def test_device_cpu_and_auto_train_without_a_gpu(reference_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with pytest.raises(UserError, match="device must be one of"):
        train(_resumable(reference_dataset, tmp_path / "tpu", device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device=cuda, but torch sees no CUDA device"):
            train(_resumable(reference_dataset, tmp_path / "cuda", device="cuda"))
        cpu = train(_resumable(reference_dataset, tmp_path / "cpu", max_epochs=1))
        auto = train(_resumable(reference_dataset, tmp_path / "auto", max_epochs=1, device="auto"))
        assert cpu.read_bytes() == auto.read_bytes()
    assert not (tmp_path / "tpu").exists() and not (tmp_path / "cuda").exists()


def test_train_logs_to_a_file_and_to_tensorboard(reference_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(_resumable(reference_dataset, out, max_epochs=3, logger="tensorboard"))
    assert "best epoch" in (out / "train.log").read_text()
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for column in ("train_loss", "val_loss"):
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{column}")]
        assert logged == [(i, pytest.approx(float(r[column]))) for i, r in enumerate(_metrics(out))]
