"""The oracle-task ablation (`train features.task_input=true`): the operator also reads the task itself."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib

import pytest
import torch
from conftest import TINY_TEACHER

from metaimprove.errors import UserError
from metaimprove.evaluation.apply import ApplyConfig, apply
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig, encode, stack, task_vector
from metaimprove.operator.networks import OperatorConfig
from metaimprove.sim.envs import UserEnv, default_task
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import Collector
from metaimprove.sim.tasks import TaskConfig, get_family
from metaimprove.training.pairs import PairConfig
from metaimprove.training.train import TrainConfig, train

SPEC = PolicySpec(17, 6)
# An operator checkpoint as written before task_input, es_gradient, envs and the recorded ask existed (the PPO
# operator once shipped as results/operators/halfcheetah_vel.ppo.*).
LEGACY = pathlib.Path(__file__).resolve().parent / "fixtures" / "legacy_operator.safetensors"
ORACLE = FeatureConfig(n_transitions=32, n_states=16, task_input=True)
SMALL = {"operator": OperatorConfig(hidden=16, context_dim=8, param_hidden=8), "features": ORACLE,
         "pairs": PairConfig(ks=[1]), "max_epochs": 2, "relabel_rounds": 1, "relabel_tasks": 1,
         "relabel_applications": 2, "relabel_starts": 2, "relabel_eval_episodes": 1}


def _train(dataset: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    return train(TrainConfig(dataset=str(dataset), out=str(out), **SMALL))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def oracle_run(reference_dataset: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A tiny oracle operator (one relabel round, so that relabel's rollouts read the task too)."""
    out = tmp_path_factory.mktemp("oracle") / "run"
    _train(reference_dataset, out)
    return out


def _apply(operator: pathlib.Path, out: pathlib.Path, **changes: object) -> pathlib.Path:
    settings: dict[str, object] = dict(operator_path=str(operator), out=str(out), task=TaskConfig("halfcheetah_vel"),
                                       n_tasks=1, seeds=1, applications=2, eval_episodes=1, workers=1,
                                       methods=["operator"])
    return apply(ApplyConfig(**{**settings, **changes}))  # type: ignore[arg-type]


def test_task_vector_is_the_task_distance_normalization() -> None:
    base = get_family("halfcheetah_vel").task("test", 0)
    phys = base.physics
    task = dataclasses.replace(base, params=(("target_velocity", 0.75),), physics=dataclasses.replace(
        phys, body_mass=(1.5,) * len(phys.body_mass), geom_friction=(1.0,) * len(phys.geom_friction),
        dof_damping=(1.3**-3,) * len(phys.dof_damping), actuator_gear=(1.2,) * len(phys.actuator_gear),
        gravity=1.2**-1))
    # halfcheetah_vel.yaml: v* in U[0, 1.5]; mass 1.5^U[-3, 3], friction 1.5^U[-3, 3], damping 1.3^U[-3, 3],
    # gear 1.2^U[-1, 1], gravity 1.2^U[-1, 1]: each exponent over its range's width, in the family's order.
    expected = ([0.75 / 1.5] + [1 / 6] * len(phys.body_mass) + [0.0] * len(phys.geom_friction)
                + [-3 / 6] * len(phys.dof_damping) + [1 / 2] * len(phys.actuator_gear) + [-1 / 2])
    assert task_vector(task).tolist() == pytest.approx(expected, abs=1e-6)
    assert len(expected) == 34


def test_the_task_changes_the_output_only_with_task_input() -> None:
    task = default_task("halfcheetah_vel")
    other = dataclasses.replace(task, params=(("target_velocity", task.param("target_velocity") + 0.5),))
    policy = Policy(SPEC, init_params(SPEC, torch.Generator().manual_seed(0)), ObsNormalizer.identity(17))
    exp = Collector(task, n_envs=2, seed=0).collect(policy, 32)
    ask = torch.tensor([[0.0, 0.1]])
    outputs = {}
    for task_input in (True, False):
        config = dataclasses.replace(ORACLE, task_input=task_input)
        ckpt = OperatorCheckpoint.from_training(config, OperatorConfig(hidden=16, context_dim=8, param_hidden=8), SPEC,
                                                [1], ask, [], {"name": "ppo", "config": TINY_TEACHER},
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


def test_oracle_operator_trains_applies_and_records_its_family(oracle_run: pathlib.Path,
                                                                tmp_path: pathlib.Path) -> None:
    op, ckpt = OperatorCheckpoint.load(oracle_run / "operator.safetensors")
    assert ckpt.features.task_input and ckpt.task_family == "halfcheetah_vel" and ckpt.task_dim == 34
    assert op.context.head[0].in_features == 2 * 16 + 2 + 1 + 2 + 34
    with (oracle_run / "relabel.csv").open() as f:
        assert [int(r["pairs_added"]) for r in csv.DictReader(f)] == [0, SMALL["relabel_starts"]]
    with _apply(oracle_run / "operator.safetensors", tmp_path / "apply").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(math.isfinite(float(r["return"])) for r in rows)


def test_oracle_training_is_seeded(reference_dataset: pathlib.Path, oracle_run: pathlib.Path,
                                   tmp_path: pathlib.Path) -> None:
    again = tmp_path / "again"
    _train(reference_dataset, again)
    for name in ("operator.safetensors", "operator_round0.safetensors", "relabel/round1-0001.safetensors"):
        assert (again / name).read_bytes() == (oracle_run / name).read_bytes(), name


def test_oracle_operator_refuses_a_user_env_and_another_family(oracle_run: pathlib.Path,
                                                                tmp_path: pathlib.Path) -> None:
    operator = oracle_run / "operator.safetensors"
    with pytest.raises(UserError, match=r"trained with features\.task_input=true\), and the user env") as info:
        _apply(operator, tmp_path / "env", env="HalfCheetah-v5", episode_length=64)
    assert "\n" not in str(info.value) and str(info.value).endswith("apply it on task=halfcheetah_vel")
    with pytest.raises(UserError, match="the user env HalfCheetah-v5 has none"):
        task_vector(UserEnv.resolve("HalfCheetah-v5", 64))
    with pytest.raises(UserError, match="reads task vectors of halfcheetah_vel"):
        _apply(operator, tmp_path / "dir", task=TaskConfig("halfcheetah_dir"))
    _apply(operator, tmp_path / "ppo", env="HalfCheetah-v5", episode_length=64, methods=["ppo"])  # no operator: fine


def test_older_checkpoints_read_no_task_and_forged_task_fields_are_refused(oracle_run: pathlib.Path,
                                                                           tmp_path: pathlib.Path) -> None:
    _, shipped = OperatorCheckpoint.load(LEGACY)  # written before the option existed
    assert not shipped.features.task_input and (shipped.task_family, shipped.task_dim) == (None, 0)
    for name in ("operator.safetensors", "operator.json"):
        (tmp_path / name).write_bytes((oracle_run / name).read_bytes())
    header = json.loads((tmp_path / "operator.json").read_text())
    for change, problem in (({"task_dim": 0}, "needs a task_family name and a task_dim"),
                            ({"task_family": None}, "needs a task_family name and a task_dim"),
                            ({"features": {**header["meta"]["features"], "task_input": False}}, "without features"),
                            ({"task_dim": 35}, "weights do not fit")):
        (tmp_path / "operator.json").write_text(json.dumps({**header, "meta": {**header["meta"], **change}}))
        with pytest.raises(UserError, match=problem):
            OperatorCheckpoint.load(tmp_path / "operator.safetensors")
