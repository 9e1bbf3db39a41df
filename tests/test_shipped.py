"""The shipped operators under results/operators/ load and agree with the collections they were trained on.

Unit tests use the ``ars_operator`` fixture instead, a small operator of the shipped halfcheetah_vel operator's shape;
the last test here checks that the two still have the same shape (``test_provenance.py`` reads ``results/`` too).
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib

import pytest
import yaml

from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.sim.envs import default_task, make_env
from metaimprove.sim.policy import PolicySpec, load_policy
from metaimprove.sim.tasks import get_family

SHIPPED = pathlib.Path(__file__).resolve().parents[1] / "results" / "operators"
POLICIES = (".dr.safetensors", ".meta.safetensors", ".start.safetensors")
"""the policies shipped beside the operators: the peers' domain-randomized policy and meta-learned start, and the
operator's learned start"""
OPERATORS = sorted(p for p in SHIPPED.glob("*.safetensors") if not p.name.endswith(POLICIES))


def _collections(operator: pathlib.Path) -> list[dict]:
    """The collect settings of the operator's datasets (``<name>.collect.yaml`` beside it: one collection, or several
    under ``collections`` for an operator trained across robots)."""
    config = yaml.safe_load(operator.with_name(operator.name.replace(".safetensors", ".collect.yaml")).read_text())
    return config.get("collections", [config])


def test_the_documented_operators_are_shipped() -> None:
    assert {"halfcheetah_vel.safetensors", "halfcheetah_vel.ppo.safetensors"} <= {p.name for p in OPERATORS}
    assert (SHIPPED / "halfcheetah_vel.dr.safetensors").is_file()


@pytest.mark.parametrize("operator", OPERATORS, ids=[p.name.removesuffix(".safetensors") for p in OPERATORS])
def test_a_shipped_operator_loads_and_matches_its_collection(operator: pathlib.Path) -> None:
    _, ckpt = OperatorCheckpoint.load(operator)
    collections = _collections(operator)
    families = [c["task"]["family"] for c in collections]
    if len(collections) == 1:
        assert operator.name.split(".")[0] == families[0]
    else:  # one operator across robots reads any policy sizes
        assert ckpt.features.agnostic and ckpt.families == sorted(families)
    planned = set()
    for collection, family in zip(collections, families, strict=True):
        assert ckpt.teacher == {"name": collection["teacher_name"], "config": collection["teacher"]}
        task = default_task(family)
        env = make_env(task)
        assert ckpt.on(task).spec == PolicySpec(env.observation_space.shape[0], env.action_space.shape[0],
                                                tuple(collection["hidden"]))
        start = collection["start"]
        assert collection["split"] == "train"
        planned |= {get_family(family).task("train", i).name for i in range(start, start + collection["n_tasks"])}
    # Trained on the collections' training tasks only: never on a task it is evaluated on.
    assert ckpt.tasks and set(ckpt.tasks) <= planned
    assert ckpt.resolve_ask_k() in ckpt.ks
    BatchSchedule.of(ckpt)  # its warm-up, if any, fits its teacher's batch


def test_the_shipped_dr_policy_has_the_shipped_operators_policy_spec() -> None:
    dr = load_policy(SHIPPED / "halfcheetah_vel.dr.safetensors")
    _, ckpt = OperatorCheckpoint.load(SHIPPED / "halfcheetah_vel.safetensors")
    assert dr.spec == ckpt.spec
    config = yaml.safe_load((SHIPPED / "halfcheetah_vel.dr.yaml").read_text())
    assert config["task"]["family"] == "halfcheetah_vel"
    # The DR peer gets the env steps the operator's training collection spent.
    collection = yaml.safe_load((SHIPPED / "halfcheetah_vel.collect.yaml").read_text())
    ars = collection["teacher"]
    spent = collection["n_tasks"] * collection["seeds"] * collection["iterations"] * 2 * ars["n_directions"] * ars[
        "n_steps"]
    assert config["iterations"] * config["ppo"]["n_envs"] * config["ppo"]["n_steps"] == spent


def test_the_shipped_meta_learned_start_has_the_shipped_operators_policy_spec() -> None:
    meta = load_policy(SHIPPED / "halfcheetah_vel.meta.safetensors")
    _, ckpt = OperatorCheckpoint.load(SHIPPED / "halfcheetah_vel.safetensors")
    assert meta.spec == ckpt.spec
    config = yaml.safe_load((SHIPPED / "halfcheetah_vel.meta.yaml").read_text())
    assert config["task"]["family"] == "halfcheetah_vel" and config["env_steps"] is None  # the dataset's env steps


def test_the_shipped_learned_start_is_the_candidate_research_chose() -> None:
    """``halfcheetah_vel.start.safetensors`` is, byte for byte, the candidate ``results/learned_start.csv`` marks
    chosen (where that candidate is a shipped file), and has the operator's policy spec."""
    start = SHIPPED / "halfcheetah_vel.start.safetensors"
    _, ckpt = OperatorCheckpoint.load(SHIPPED / "halfcheetah_vel.safetensors")
    assert load_policy(start).spec == ckpt.spec
    with (SHIPPED.parents[0] / "learned_start.csv").open() as f:
        chosen = [row for row in csv.DictReader(f) if row["chosen"] == "True"]
    assert len(chosen) == 1
    assert yaml.safe_load(start.with_suffix(".yaml").read_text())["candidate"] == chosen[0]["candidate"]
    source = SHIPPED.parents[1] / chosen[0]["policy"]
    if source.is_file():
        assert source.read_bytes() == start.read_bytes()


def test_the_fixture_operator_has_the_shipped_operators_shape(ars_operator: pathlib.Path) -> None:
    _, shipped = OperatorCheckpoint.load(SHIPPED / "halfcheetah_vel.safetensors")
    _, fixture = OperatorCheckpoint.load(ars_operator)
    assert fixture.spec == shipped.spec and fixture.ks == shipped.ks
    assert fixture.teacher["name"] == shipped.teacher["name"] == "ars"
    assert fixture.features.es_gradient and shipped.features.es_gradient
    assert fixture.features.warmup and shipped.features.warmup
    assert fixture.ask_k is not None and shipped.ask_k is not None
    assert {t.split("/")[0] for t in fixture.tasks} == {t.split("/")[0] for t in shipped.tasks} == {"halfcheetah_vel"}


def test_the_shipped_training_settings_describe_the_shipped_operator() -> None:
    """``halfcheetah_vel.train.yaml`` is a whole ``TrainConfig`` (less dataset and out) whose operator, features and
    ask are the checkpoint's (``benchmarks/reproduce.py`` retrains from it and compares the bytes)."""
    from omegaconf import OmegaConf

    from metaimprove.training.train import TrainConfig

    settings = yaml.safe_load((SHIPPED / "halfcheetah_vel.train.yaml").read_text())
    assert not {"dataset", "out"} & set(settings)
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), settings,
                                                 {"dataset": "unused", "out": "unused"}))
    _, ckpt = OperatorCheckpoint.load(SHIPPED / "halfcheetah_vel.safetensors")
    assert config.operator == ckpt.operator and config.ask_k == ckpt.ask_k and config.pairs.ks == ckpt.ks
    # The checkpoint records the features it resolved (es_gradient from the teacher); the settings may leave it auto.
    assert config.features == dataclasses.replace(ckpt.features, es_gradient=config.features.es_gradient)
