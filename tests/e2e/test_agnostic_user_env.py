"""A shape-agnostic operator, trained across two robots, applied to a gymnasium env no task family uses
(`apply env=Reacher-v5`, obs 10 / act 2): from fresh policies of its default spec, from a policy of other hidden
sizes (`init=` and the Python API), and the inputs it refuses."""

from __future__ import annotations

import pathlib

import pytest
import torch

import metaimprove as mi
from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params, load_policy, save_policy
from metaimprove.training.train import train
from tests.helpers import TINY_TEACHER, agnostic_train_config, apply_config, curve_rows

ENV = "Reacher-v5"
OBS, ACT = 10, 2
BATCH = TINY_TEACHER["n_envs"] * TINY_TEACHER["n_steps"]
ARS_BATCH = 16 * 256  # ARS's defaults (the operator learned from PPO): 8 antithetic pairs × 256 steps


@pytest.fixture(scope="module")
def agnostic_operator(reference_dataset: pathlib.Path, hopper_dataset: pathlib.Path,
                      tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A tiny shape-agnostic operator trained on halfcheetah_vel and hopper_rand_params collections."""
    out = tmp_path_factory.mktemp("agnostic") / "run"
    return train(agnostic_train_config([reference_dataset, hopper_dataset], out))


def _policy(spec: PolicySpec, seed: int) -> Policy:
    return Policy(spec, init_params(spec, torch.Generator().manual_seed(seed)), ObsNormalizer.identity(spec.obs_dim))


def test_it_improves_a_fresh_policy_of_its_default_spec_seeded(agnostic_operator: pathlib.Path,
                                                               tmp_path: pathlib.Path) -> None:
    methods = ["operator", "ars", "no_update"]
    for run in ("a", "b"):
        apply(apply_config(agnostic_operator, tmp_path / run, env=ENV, methods=methods, seeds=1, budget=ARS_BATCH,
                           save_policies=True))
    rows = curve_rows(tmp_path / "a")
    assert rows == curve_rows(tmp_path / "b")  # same seed, same curves
    assert {r["task"] for r in rows} == {ENV}
    steps = {m: [int(r["env_steps"]) for r in rows if r["method"] == m] for m in methods}
    assert steps["operator"] == list(range(0, ARS_BATCH + 1, BATCH)) and steps["ars"] == [0, ARS_BATCH]
    assert steps["no_update"] == steps["operator"]  # a fixed policy is drawn flat on the operator's batches
    assert len({r["return"] for r in rows if r["env_steps"] == "0"}) == 1  # every method from the same θ⁰
    # A fresh policy of the operator's hidden sizes for the env's obs and act sizes, changed by the operator.
    _, ckpt = OperatorCheckpoint.load(agnostic_operator)
    final = {m: load_policy(tmp_path / "a" / "policies" / m / f"{ENV}-s0.safetensors") for m in methods}
    assert final["no_update"].spec == PolicySpec(OBS, ACT, hidden=ckpt.spec.hidden)
    assert (ckpt.spec.obs_dim, ckpt.spec.act_dim) != (OBS, ACT)
    assert final["operator"].spec == final["no_update"].spec
    assert not torch.equal(final["operator"].theta, final["no_update"].theta)
    assert torch.isfinite(final["operator"].theta).all()


def test_it_improves_a_policy_of_other_hidden_sizes_in_apply_and_the_api(agnostic_operator: pathlib.Path,
                                                                          tmp_path: pathlib.Path) -> None:
    start = _policy(PolicySpec(OBS, ACT, hidden=(8,)), seed=3)
    save_policy(tmp_path / "init.safetensors", start)
    out = tmp_path / "out"
    apply(apply_config(agnostic_operator, out, env=ENV, methods=["operator"], seeds=1, init=str(tmp_path /
                       "init.safetensors"), save_policies=True))
    final = load_policy(out / "policies" / "operator" / f"{ENV}-s0.safetensors")
    assert [r["env_steps"] for r in curve_rows(out)] == ["0", str(BATCH), str(2 * BATCH)]
    assert final.spec == start.spec and not torch.equal(final.theta, start.theta)
    # The API's improve is apply's operator run: the same policy after the same batches.
    op = mi.Operator.from_pretrained(agnostic_operator)
    points = list(op.improve(start, ENV, budget=2 * BATCH))
    assert [s for s, _ in points] == [BATCH, 2 * BATCH] and torch.equal(points[-1][1].theta, final.theta)
    fresh = op.initial_policy(0, ENV)
    assert (fresh.spec.obs_dim, fresh.spec.act_dim, fresh.spec.hidden) == (OBS, ACT, op.checkpoint.spec.hidden)


def test_what_does_not_fit_the_env_is_one_line(agnostic_operator: pathlib.Path, operator_path: pathlib.Path,
                                               tmp_path: pathlib.Path) -> None:
    # A per-family operator improves its own robot's sizes only.
    with pytest.raises(UserError) as info:
        apply(apply_config(operator_path, tmp_path / "out", env=ENV, methods=["operator"]))
    assert str(info.value) == (f"env {ENV} has obs ({OBS},) / act ({ACT},) but operator {operator_path} improves "
                               "obs 17 / act 6")
    # An agnostic operator takes any hidden sizes, but the obs and act sizes are the env's.
    wrong = tmp_path / "cheetah.safetensors"
    save_policy(wrong, _policy(PolicySpec(17, 6), seed=0))
    with pytest.raises(UserError) as info:
        apply(apply_config(agnostic_operator, tmp_path / "out", env=ENV, methods=["operator"], init=str(wrong)))
    assert str(info.value) == f"initial policy {wrong} takes obs 17 / act 6 but {ENV} has obs {OBS} / act {ACT}"
    with pytest.raises(UserError, match=f"^the policy takes obs 17 / act 6 but {ENV} has obs {OBS} / act {ACT}$"):
        mi.Operator.from_pretrained(agnostic_operator).improve(_policy(PolicySpec(17, 6), seed=0), ENV, BATCH)
    assert not (tmp_path / "out").exists()
