"""Applying an operator: its batch is its teacher's, warm-up schedules, and collecting as its teacher does."""

from __future__ import annotations

import json
import pathlib
from types import SimpleNamespace

import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.runtime import BatchSchedule, Explorer, operator_teacher
from metaimprove.sim.envs import default_task
from metaimprove.sim.policy import ObsNormalizer, Policy, init_params
from metaimprove.sim.tasks import TaskConfig
from metaimprove.storage import meta_path
from metaimprove.training.train import TrainConfig, train
from tests.helpers import TINY_ARS, TINY_TRAIN


def test_operator_batch_is_its_teachers_batch_for_every_teacher() -> None:
    # An operator trained on ARS pairs improves from ARS-shaped batches: one env per perturbed policy.
    whole = FeatureConfig()
    ars = SimpleNamespace(teacher={"name": "ars", "config": {"n_directions": 4, "n_steps": 64}}, features=whole)
    ppo = SimpleNamespace(teacher={"name": "ppo", "config": {"n_envs": 3, "n_steps": 32}}, features=whole)
    assert operator_teacher(ars).batch_shape == (8, 64)  # type: ignore[arg-type]
    assert operator_teacher(ppo).batch_shape == (3, 32)  # type: ignore[arg-type]
    # Trained to read a subset of its teacher's envs, it collects batches that wide.
    narrow = FeatureConfig(n_envs=2)
    assert operator_teacher(SimpleNamespace(teacher=ars.teacher, features=narrow)).batch_shape == (2, 64)  # type: ignore[arg-type]
    assert operator_teacher(SimpleNamespace(teacher=ppo.teacher, features=narrow)).batch_shape == (2, 32)  # type: ignore[arg-type]


def test_batch_schedule_switches_width_at_the_end_of_each_warm_up_phase() -> None:
    schedule = BatchSchedule(n_envs=8, n_steps=10, warmup=((2, 40), (4, 100)))
    assert [schedule.envs_at(s) for s in (0, 39, 40, 99, 100, 10**9)] == [2, 2, 4, 4, 8, 8]
    assert schedule.batch_at(0) == 20 and schedule.batch_at(100) == 80
    # The full width keeps the run's own seed (runs without a warm-up collect as before); each width its own.
    assert schedule.seed(3, 8) == 3 and len({schedule.seed(3, e) for e in (2, 4, 8)}) == 3


def test_an_operator_trained_on_ars_reads_its_perturbations_and_collects_as_ars_does(
        ars_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    path = train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "op"), **TINY_TRAIN))  # type: ignore[arg-type]
    op, ckpt = OperatorCheckpoint.load(path)
    assert ckpt.features.es_gradient is True and op.update.es is not None  # decided from the data
    spec = ckpt.spec
    start = Policy(spec, init_params(spec, torch.Generator().manual_seed(1)), ObsNormalizer.identity(spec.obs_dim))
    exp = Explorer(ckpt, default_task("halfcheetah_vel"), start, 0)(start, 0)
    assert exp.perturbation is not None and exp.obs.shape[1] == 2 * TINY_ARS.n_directions
    out = apply(ApplyConfig(operator_path=str(path), out=str(tmp_path / "apply"), task=TaskConfig("halfcheetah_vel"),
                            n_tasks=1, seeds=1, applications=2, eval_episodes=1, workers=1,
                            methods=["operator", "operator_guarded", "ars"]))
    methods = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    assert methods.count("operator") == methods.count("ars") == 1 + 2  # the start and two batches each


def test_an_operator_trained_on_part_of_each_batch_collects_that_much(ars_dataset: pathlib.Path,
                                                                      tmp_path: pathlib.Path) -> None:
    settings = {**TINY_TRAIN, "features": FeatureConfig(n_transitions=32, n_states=16, n_envs=2)}
    path = train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "op"), **settings))  # type: ignore[arg-type]
    _, ckpt = OperatorCheckpoint.load(path)
    assert ckpt.features.n_envs == 2 and operator_teacher(ckpt).batch_shape == (2, TINY_ARS.n_steps)
    spec = ckpt.spec
    start = Policy(spec, init_params(spec, torch.Generator().manual_seed(1)), ObsNormalizer.identity(spec.obs_dim))
    exp = Explorer(ckpt, default_task("halfcheetah_vel"), start, 0)(start, 0)
    assert exp.perturbation is not None and exp.obs.shape[1] == 2
    out = apply(ApplyConfig(operator_path=str(path), out=str(tmp_path / "apply"), task=TaskConfig("halfcheetah_vel"),
                            n_tasks=1, seeds=1, applications=2, eval_episodes=1, workers=1,
                            methods=["operator", "ars", "teacher_op_batch"]))
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    # Two operator batches of 2 envs fit the budget of two of its own batches; ARS's batch of 4 fits once, and
    # ARS with the operator's batch twice.
    half = [0, 2 * TINY_ARS.n_steps, 4 * TINY_ARS.n_steps]
    assert [int(r[3]) for r in rows if r[0] == "operator"] == half
    assert [int(r[3]) for r in rows if r[0] == "ars"] == [0, 4 * TINY_ARS.n_steps]
    assert [int(r[3]) for r in rows if r[0] == "teacher_op_batch"] == half
    header = json.loads(meta_path(path).read_text())
    header["meta"]["features"]["n_envs"] = "2"
    meta_path(path).write_text(json.dumps(header))
    with pytest.raises(UserError, match=r"features\.n_envs must be int"):
        OperatorCheckpoint.load(path)
