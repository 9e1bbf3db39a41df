"""An operator with memory across applications (``operator.memory``): training reads each teacher run's history as
apply carries the operator's own, the state changes what the operator does, and it trains, resumes and applies."""

from __future__ import annotations

import dataclasses
import math
import pathlib

import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.networks import ApplicationMemory
from metaimprove.operator.runtime import MemoryCarry
from metaimprove.storage import load_tensors
from metaimprove.training.outcome import outcome
from metaimprove.training.pairs import PairConfig, build_pairs
from metaimprove.training.train import TrainConfig, train
from tests.helpers import TINY_TRAIN, apply_config, curve_rows, tiny_outcome, train_interrupted_then_resumed

MEMORY_TRAIN = {**TINY_TRAIN, "operator": dataclasses.replace(TINY_TRAIN["operator"], memory=4),  # type: ignore[type-var]
                "max_epochs": 3, "patience": 100}


@pytest.mark.parametrize("n_envs", [None, 2])
def test_training_reads_each_runs_history_as_apply_carries_it(ars_dataset: pathlib.Path, n_envs: int | None) -> None:
    pairs = build_pairs(ars_dataset, PairConfig(ks=[1]), FeatureConfig(n_transitions=32, n_states=16, n_envs=n_envs))
    torch.manual_seed(0)
    memory = ApplicationMemory(5)
    with torch.no_grad():
        trained = pairs.memory_states(memory, torch.arange(len(pairs.source)))
    # Apply's carry along each run, the operator stepping exactly as the teacher did (its k = 1 target).
    target_of = {int(s): p for p, s in enumerate(pairs.source)}
    carried: dict[int, torch.Tensor] = {}
    carry = None
    with torch.no_grad():
        for item, n in enumerate(pairs.items["iteration"].tolist()):
            carry = MemoryCarry(memory) if n == 0 else carry
            assert carry is not None and carry.n == n
            carried[item] = carry.state[0]
            if item in target_of:  # a run's last iteration has no next θ, and nothing after it reads one
                carry.advance({k: v[item] for k, v in pairs.items.items()}, pairs.targets[target_of[item]])
    assert max(pairs.items["iteration"].tolist()) >= 2  # histories of more than one application are compared
    for p, source in enumerate(pairs.source.tolist()):
        assert torch.allclose(trained[p], carried[source], atol=1e-6)
    assert trained.abs().sum() > 0  # not only first applications


def test_an_operator_with_memory_trains_resumes_and_applies_the_same_twice(
        ars_dataset: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "whole"), **MEMORY_TRAIN))  # type: ignore[arg-type]
    op, ckpt = OperatorCheckpoint.load(whole)
    assert ckpt.operator.memory == 4 and op.memory is not None
    start = ckpt.new_operator().state_dict()
    assert not torch.equal(op.state_dict()["memory.cell.weight_ih"], start["memory.cell.weight_ih"])  # it was fitted

    # Its state is read: the same (θ, τ) gives another θ' after another history.
    pairs = build_pairs(ars_dataset, PairConfig(ks=[1]), ckpt.features)
    feats, ask, _, _ = pairs.batch(torch.arange(2))
    with torch.no_grad():
        fresh = op(feats, ask, ckpt.spec)
        later = op(feats, ask, ckpt.spec, torch.ones(2, 4))
    assert not torch.allclose(fresh, later)

    # Interrupted in its second epoch, the same command resumes it to the same weights.
    part = TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "part"), **MEMORY_TRAIN)  # type: ignore[arg-type]
    resumed = train_interrupted_then_resumed(part, monkeypatch, interrupt_at=2)
    assert all(torch.equal(v, load_tensors(whole)[0][k]) for k, v in load_tensors(resumed)[0].items())

    # Applied, it carries its state through a run: two applies of the same run give the same curve.
    rows = [curve_rows(apply(apply_config(whole, tmp_path / f"apply{i}", seeds=1, applications=3,
                                          methods=["operator"])).parent) for i in (0, 1)]
    assert rows[0] == rows[1] and len(rows[0]) == 4


def test_a_negative_memory_width_is_a_one_line_error(ars_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    settings = {**TINY_TRAIN, "operator": dataclasses.replace(TINY_TRAIN["operator"], memory=-1)}  # type: ignore[type-var]
    with pytest.raises(UserError, match=r"operator.memory=-1: give the width"):
        train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "op"), **settings))  # type: ignore[arg-type]
    assert not (tmp_path / "op").exists()


def test_outcome_training_evolves_the_memory_and_the_evolved_operator_applies(
        ars_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    source = train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "op"), **MEMORY_TRAIN))  # type: ignore[arg-type]
    evolved = outcome(tiny_outcome(source, tmp_path / "outcome", evolve=["memory"]))
    before, after = (OperatorCheckpoint.load(path)[0].state_dict() for path in (source, evolved))
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all(name.startswith("memory.") for name in moved)  # only the memory evolved
    rows = curve_rows(apply(apply_config(evolved, tmp_path / "apply", seeds=1, applications=3,
                                         methods=["operator"])).parent)
    assert len(rows) == 4 and all(math.isfinite(float(r["return"])) for r in rows)
