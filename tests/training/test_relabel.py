"""Relabeling and augmentation: teacher pairs from the policies the operator visits and from perturbed dataset
policies."""

import csv
import pathlib
import re

import numpy as np
import pytest
import torch

from metaimprove.data.collect import load_manifest, load_shard
from metaimprove.errors import UserError
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.sim.envs import default_task
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, fold_normalizer, init_params
from metaimprove.sim.tasks import Task
from metaimprove.storage import load_tensors
from metaimprove.teachers import make_teacher
from metaimprove.training.pairs import PairConfig
from metaimprove.training.relabel import Start, dataset_runs, operator_visits, perturbed_starts, teacher_pairs
from metaimprove.training.train import TrainConfig, train
from tests.helpers import TINY_TEACHER, TINY_TRAIN

TEACHER = {"name": "ppo", "config": TINY_TEACHER}


RELABEL = {"relabel_rounds": 1, "relabel_tasks": 1, "relabel_applications": 2, "relabel_starts": 3,
           "relabel_eval_episodes": 1}


def _train(dataset: pathlib.Path, out: pathlib.Path, **changes: object) -> pathlib.Path:
    return train(TrainConfig(dataset=str(dataset), out=str(out), **{**TINY_TRAIN, **changes}))  # type: ignore[arg-type]


def _rows(path: pathlib.Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_teacher_pairs_are_the_teachers_k_step_improvement_from_the_start(tmp_path: pathlib.Path) -> None:
    spec = PolicySpec(17, 6)
    task = default_task("halfcheetah_vel")
    start = Policy(spec, init_params(spec, torch.Generator().manual_seed(3)), ObsNormalizer.identity(17))
    pairs, steps = teacher_pairs([Start(task, start, 7, "test")], TEACHER, PairConfig(ks=[1, 2]), FeatureConfig(),
                                 tmp_path, "chain", torch.Generator().manual_seed(0))
    batch = TINY_TEACHER["n_envs"] * TINY_TEACHER["n_steps"]
    assert steps == 3 * batch  # max(ks) + 1 updates: θ² must collect τ² for its ask and loss states
    assert len(pairs.source) == 2 + 1  # k=1 from θ⁰ and θ¹, k=2 from θ⁰
    assert torch.equal(pairs.items["theta"][0], start.theta)
    records = list(make_teacher(TEACHER).run(task, start, 3, 7))  # the same run, independently
    for k in (1, 2):
        i = int(((pairs.source == 0) & (pairs.ask[:, 0] == np.log2(k))).nonzero())
        target = records[k - 1].next_policy
        expected = fold_normalizer(spec, target.theta.double(), target.normalizer, records[0].next_policy.normalizer)
        assert torch.equal(pairs.targets[i], expected.float())
        rate = [float(r.experience.reward.double().mean()) for r in records]
        assert pairs.ask[i, 1].item() == pytest.approx(rate[k] - rate[0], rel=1e-5)
    tensors, meta = load_tensors(tmp_path / "chain-0000.safetensors")
    assert torch.equal(tensors["theta"][0], start.theta) and meta["origin"] == "test"


@pytest.fixture(scope="module")
def relabel_run(reference_dataset: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("relabel") / "run"
    _train(reference_dataset, out, **RELABEL)
    return out


def test_relabel_round_adds_teacher_pairs_from_the_policies_the_operator_visited(relabel_run: pathlib.Path) -> None:
    rows = _rows(relabel_run / "relabel.csv")
    assert [int(r["round"]) for r in rows] == [0, 1]
    # ks = [1]: a 2-update teacher run from each visited policy gives one pair
    assert [int(r["pairs_added"]) for r in rows] == [0, RELABEL["relabel_starts"]]
    batch = TINY_TEACHER["n_envs"] * TINY_TEACHER["n_steps"]
    assert int(rows[1]["teacher_env_steps"]) == RELABEL["relabel_starts"] * 2 * batch
    assert all(np.isfinite(float(r[c])) for r in rows for c in ("train_return", "val_return", "val_loss"))
    chains = sorted((relabel_run / "relabel").glob("round1-*.safetensors"))
    assert len(chains) == RELABEL["relabel_starts"]
    # every chain starts from a policy the round-0 operator visits, and continues as the teacher does from it
    op, ckpt = OperatorCheckpoint.load(relabel_run / "operator_round0.safetensors")
    for path in chains:
        tensors, meta = load_tensors(path)
        task = Task.from_dict(meta["task"])
        assert task.name in ckpt.tasks  # relabeling never touches validation tasks
        start_seed, step = divmod(meta["seed"], 1_000)
        init_seed = int(re.search(r"init seed (\d+)", meta["origin"]).group(1))  # type: ignore[union-attr]
        theta0 = init_params(ckpt.spec, torch.Generator().manual_seed(init_seed))
        start = Policy(ckpt.spec, theta0, ObsNormalizer.identity(ckpt.spec.obs_dim))
        visits, _, _ = operator_visits(op, ckpt, [Start(task, start, start_seed, "")], step, ckpt.ask(), 1)
        visited = visits[-1].policy
        assert torch.equal(tensors["theta"][0], visited.theta)
        assert np.array_equal(tensors["norm_mean"][0].numpy(), visited.normalizer.mean)
        records = list(make_teacher(meta["teacher"]).run(task, visited, 2, meta["seed"]))
        assert torch.equal(tensors["theta"][1], records[0].next_policy.theta)


def test_relabeling_is_seeded(reference_dataset: pathlib.Path, relabel_run: pathlib.Path,
                              tmp_path: pathlib.Path) -> None:
    again = tmp_path / "again"
    _train(reference_dataset, again, **RELABEL)
    for name in ("operator.safetensors", "operator_round0.safetensors", "relabel/round1-0000.safetensors",
                 "relabel/round1-0002.safetensors"):
        assert (again / name).read_bytes() == (relabel_run / name).read_bytes(), name
    before = [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(relabel_run / "relabel.csv")]
    assert before == [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(again / "relabel.csv")]


def test_augmentation_starts_from_perturbed_dataset_policies(reference_dataset: pathlib.Path,
                                                             tmp_path: pathlib.Path) -> None:
    runs = dataset_runs([str(reference_dataset)], {e["task_name"] for e in load_manifest(reference_dataset)})
    starts = perturbed_starts(runs, 4, noise=0.1, seed=0)
    shards = {(e["task_name"], e["seed"]): load_shard(reference_dataset, e)[0]
              for e in load_manifest(reference_dataset)}
    for start in starts:
        name, seed, n = re.fullmatch(r"(\S+) seed (\d+) iteration (\d+) \+ noise 0.1", start.origin).groups()  # type: ignore[union-attr]
        t = shards[(name, int(seed))]
        assert start.task.name == name
        # the dataset policy θⁿ with its normalizer, θ moved by ~10% of each block's RMS
        assert np.array_equal(t["norm_mean"][int(n)].numpy(), start.policy.normalizer.mean)
        delta = start.policy.spec.unflatten(start.policy.theta - t["theta"][int(n)])
        base = start.policy.spec.unflatten(t["theta"][int(n)])
        for block in ("W0", "W1", "W2"):
            ratio = delta[block].square().mean().sqrt() / base[block].square().mean().sqrt()
            assert 0.08 < float(ratio) < 0.12, block
    out = tmp_path / "aug"
    _train(reference_dataset, out, augment_starts=4, augment_noise=0.1)
    chains = sorted((out / "augment").glob("augment-*.safetensors"))
    assert len(chains) == 4
    _, ckpt = OperatorCheckpoint.load(out / "operator.safetensors")
    train_runs = [r for r in runs if r.task.name in ckpt.tasks]
    expected = perturbed_starts(train_runs, 4, noise=0.1, seed=0)  # train() perturbs training-task runs only
    for path, start in zip(chains, expected, strict=True):
        assert torch.equal(load_tensors(path)[0]["theta"][0], start.policy.theta)
    summary = load_tensors(out / "operator.safetensors")[1]["summary"]
    assert summary["train_pairs"] == 2 * 2 + 4  # 2 training tasks × 2 seeds × 1 pair, and 1 pair per perturbed start


@pytest.mark.parametrize("bad", [{"relabel_rounds": -1}, {"augment_starts": -2}, {"relabel_starts": 0},
                                 {"augment_noise": -0.1}])
def test_bad_relabel_and_augmentation_settings_are_refused(reference_dataset: pathlib.Path, tmp_path: pathlib.Path,
                                                           bad: dict[str, float]) -> None:
    name, value = next(iter(bad.items()))
    with pytest.raises(UserError, match=f"{name}={value}"):
        _train(reference_dataset, tmp_path / "out", **bad)
    assert not (tmp_path / "out").exists()
