"""The method registry: one entry adds a method to apply, its validation and its plots."""

import pathlib
from collections.abc import Iterator

import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.evaluation import methods
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.guard import Point
from metaimprove.evaluation.methods import METHODS, Method, Run, method_names, starts_from_theta0
from metaimprove.evaluation.plot import method_colors
from metaimprove.sim.policy import Policy
from tests.helpers import apply_config, curve_rows


def _halved(run: Run, start: Point) -> Iterator[Point]:
    """A toy adapting method: after each batch's worth of env steps, θ is halved."""
    steps, policy = start.steps, start.policy
    while steps + run.schedule.batch <= run.budget:
        steps += run.schedule.batch
        policy = Policy(policy.spec, policy.theta / 2, policy.normalizer)
        yield Point(steps, policy)


def test_one_registry_entry_adds_a_method_to_apply(operator_path: pathlib.Path, tmp_path: pathlib.Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "halved", Method("halved", None, points=_halved, on_user_env=True,
                                                  improves_start=True))
    assert "halved" in method_names() and starts_from_theta0("halved")
    apply(apply_config(operator_path, tmp_path / "run", methods=["halved", "no_update"]))
    rows = curve_rows(tmp_path / "run")
    halved = [r for r in rows if r["method"] == "halved"]
    assert [int(r["env_steps"]) for r in halved if r["seed"] == "0"] == [0, 64, 128]  # start + 2 batches of 2 × 32
    start = {r["seed"]: r["return"] for r in rows if r["method"] == "no_update"}
    assert {r["seed"]: r["return"] for r in halved if r["env_steps"] == "0"} == start  # the same θ⁰, evaluated alike
    assert method_colors(["halved", "ppo"])["halved"] != method_colors(["halved", "ppo"])["ppo"]


def test_a_fixed_method_is_drawn_flat_from_its_charged_steps(operator_path: pathlib.Path, tmp_path: pathlib.Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "zeros", Method("zeros", None, policy=lambda run: (
        Policy(run.ckpt.spec, torch.zeros(run.ckpt.spec.n_params), run.start().normalizer), 64)))
    apply(apply_config(operator_path, tmp_path / "run", methods=["zeros"], seeds=1))
    rows = curve_rows(tmp_path / "run")
    assert [int(r["env_steps"]) for r in rows] == [64, 128]  # charged one batch: its curve starts there
    assert len({r["return"] for r in rows}) == 1


def test_a_method_needing_a_dataset_is_refused_without_one(operator_path: pathlib.Path, tmp_path: pathlib.Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "halved", Method("halved", None, points=_halved, needs=("dataset",)))
    with pytest.raises(UserError, match="halved need"):
        apply(apply_config(operator_path, tmp_path / "run", methods=["halved"]))
    assert not (tmp_path / "run").exists()


def test_a_method_is_either_adapting_or_fixed() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Method("both", None, points=_halved, policy=lambda run: (run.start(), 0))
    with pytest.raises(ValueError, match="exactly one"):
        Method("neither", None)


def test_the_registry_holds_every_method_in_table_order() -> None:
    assert method_names()[:2] == ["operator", "operator_guarded"]
    assert [m for m in method_names() if METHODS[m].needs == ("dataset",)] == [
        "nearest", "nearest_noise", "nearest_avg", "avg_weights", "transferred", "nearest_ars", "transferred_ars"]
    assert [m for m in method_names() if METHODS[m].needs == ("dr_policy",)] == ["dr", "dr_ppo", "dr_ars"]
    assert {m for m in method_names() if METHODS[m].uses_operator} == {"operator", "operator_guarded",
                                                                        "operator_learned_start"}
    assert methods.TEACHER_COLORS.keys() <= set(method_names())


def test_pretrained_policies_fine_tuned_by_ars_start_where_their_selection_left_them(
        ars_operator: pathlib.Path, ars_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    methods = ["nearest", "nearest_ars", "transferred", "transferred_ars"]
    apply(apply_config(ars_operator, tmp_path / "run", methods=methods, dataset=str(ars_dataset), seeds=1,
                       budget=1280))
    rows = curve_rows(tmp_path / "run")
    curve = {m: [(int(r["env_steps"]), float(r["return"])) for r in rows if r["method"] == m] for m in methods}
    charged = curve["transferred"][0][0]  # 3 training runs × 1 selection episode
    assert charged == 3 * 256
    # Each fine-tuned curve starts at its pretrained policy, where and as that policy stands, then takes ARS steps
    # of one 4-env × 32-step batch each for the rest of the budget.
    assert curve["transferred_ars"][0] == curve["transferred"][0]
    assert [s for s, _ in curve["transferred_ars"]] == list(range(charged, 1280 + 1, 128))
    assert curve["nearest_ars"][0] == curve["nearest"][0]
    assert [s for s, _ in curve["nearest_ars"]] == list(range(0, 1280 + 1, 128))
    assert len({r for _, r in curve["nearest_ars"]}) > 1  # ARS moved it


@pytest.mark.parametrize("method", ["operator", "ars", "teacher_op_batch"])
def test_a_longer_budget_extends_a_run_without_changing_its_start(ars_operator: pathlib.Path, tmp_path: pathlib.Path,
                                                                   method: str) -> None:
    """These runs are seeded and never look ahead at their budget: a run to 2B starts as the run to B, row for row
    (the benchmark reads their scores at B from runs to 4B). The guarded operator does look: it skips verifications
    that would not fit in what is left."""
    rows = {n: curve_rows(apply(apply_config(ars_operator, tmp_path / str(n), methods=[method], seeds=1,
                                             applications=n)).parent) for n in (3, 6)}
    end = max(int(r["env_steps"]) for r in rows[3])
    assert len(rows[6]) > len(rows[3])
    assert [r for r in rows[6] if int(r["env_steps"]) <= end] == rows[3]
