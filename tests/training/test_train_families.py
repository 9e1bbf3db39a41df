"""One shape-agnostic operator trained across robots (a union of two families' collections), resumed, applied to a
family of another policy spec, and the unions and envs it refuses."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.sim.tasks import TaskConfig
from metaimprove.storage import load_tensors
from metaimprove.training.train import train
from tests.helpers import TINY_TRAIN, agnostic_train_config, apply_config, curve_rows, train_interrupted_then_resumed


def test_one_operator_trains_across_two_robots_resumes_and_applies_to_either(
        reference_dataset: pathlib.Path, hopper_dataset: pathlib.Path, tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = [reference_dataset, hopper_dataset]
    whole = train(agnostic_train_config(datasets, tmp_path / "whole"))
    op, ckpt = OperatorCheckpoint.load(whole)
    assert ckpt.features.agnostic and ckpt.families == ["halfcheetah_vel", "hopper_rand_params"]
    assert ckpt.spec.obs_dim == 17  # built for the first dataset's spec: apply's fresh policies take its hidden sizes
    start = ckpt.new_operator().state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in op.state_dict().items())  # it was fitted

    # Interrupted in its third epoch, the same command resumes it to the same weights.
    resumed = train_interrupted_then_resumed(agnostic_train_config(datasets, tmp_path / "part"), monkeypatch, 3)
    assert load_tensors(resumed)[0].keys() == load_tensors(whole)[0].keys()
    assert all(torch.equal(v, load_tensors(whole)[0][k]) for k, v in load_tensors(resumed)[0].items())

    # Applied to held-out tasks of either robot, from fresh policies of that robot's sizes.
    for family in ckpt.families:
        out = tmp_path / f"apply_{family}"
        apply(apply_config(whole, out, task=TaskConfig(family), split="test", seeds=1, methods=["operator"]))
        rows = curve_rows(out)
        assert [r["env_steps"] for r in rows] == ["0", "64", "128"] and all(r["task"].startswith(family) for r in rows)


@pytest.mark.parametrize(("union", "changes", "message"), [
    ("families", {"features": TINY_TRAIN["features"]}, r"hold different policy specs .*\(features.agnostic=true\)"),
    ("teachers", {}, r"come from teachers that explore differently \(ppo vs ars"),
    ("families", {"relabel_rounds": 1}, "relabel_rounds run one robot's teacher"),
    ("families", {"operator": dataclasses.replace(TINY_TRAIN["operator"], arch="flat")},  # type: ignore[type-var]
     "features.agnostic=true needs operator.arch=per_param"),
], ids=["per_family_features", "ppo_and_ars", "relabel", "flat"])
def test_unions_an_operator_cannot_take_are_refused_before_anything_is_written(
        reference_dataset: pathlib.Path, hopper_dataset: pathlib.Path, ars_dataset: pathlib.Path,
        tmp_path: pathlib.Path, union: str, changes: dict[str, object], message: str) -> None:
    other = hopper_dataset if union == "families" else ars_dataset
    with pytest.raises(UserError, match=message) as err:
        train(agnostic_train_config([reference_dataset, other], tmp_path / "out", **changes))
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_a_per_family_operator_still_refuses_another_robot(ars_operator: pathlib.Path,
                                                           tmp_path: pathlib.Path) -> None:
    with pytest.raises(UserError, match=r"improves policies with obs 17 / act 6 but hopper_rand_params has obs 11"):
        apply(apply_config(ars_operator, tmp_path / "out", task=TaskConfig("hopper_rand_params"), split="test",
                           methods=["operator"]))
    assert not (tmp_path / "out").exists()


def test_an_env_without_box_spaces_is_refused_in_one_line(ars_operator: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with pytest.raises(UserError, match="need one-dimensional Box spaces") as err:
        apply(apply_config(ars_operator, tmp_path / "out", task=TaskConfig("halfcheetah_vel"), env="CartPole-v1",
                           methods=["operator"]))
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
