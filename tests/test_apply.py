"""apply's methods and baselines: checkpoint baselines, the guard, the DR stage, budgets, bad input, determinism."""

from __future__ import annotations

import csv
import dataclasses
import pathlib
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_TEACHER, run_cli

from metaimprove.errors import UserError
from metaimprove.evaluation.apply import ApplyConfig, apply, initial_policy, method_names
from metaimprove.evaluation.baselines import (
    DRConfig,
    add_noise,
    average_policies,
    nearest_runs,
    pooled_normalizer,
    shared_init_average,
    train_dr,
    training_runs,
    transferred,
)
from metaimprove.evaluation.guard import Guard, Point, guarded_steps
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.networks import ImprovementOperator, OperatorConfig
from metaimprove.operator.runtime import operator_batch
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, fold_normalizer, forward, init_params, load_policy
from metaimprove.sim.rollout import evaluate
from metaimprove.sim.tasks import TaskConfig, get_family, task_distance
from metaimprove.teachers import TEACHERS, PPOConfig

SPEC = PolicySpec(17, 6)
BATCH = TINY_TEACHER["n_envs"] * TINY_TEACHER["n_steps"]
# 6 training runs × 1 selection episode × 256 steps: the budget must pay for transferred's selection.
SELECTION_STEPS = 6 * 256


@pytest.fixture(scope="module")
def operator_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """An untrained operator for the halfcheetah policy spec whose teacher is the tiny PPO."""
    op = ImprovementOperator(SPEC, OperatorConfig())
    ckpt = OperatorCheckpoint.from_training(FeatureConfig(), op.config, SPEC, [1], torch.tensor([[0.0, 0.1]]), [],
                                            {"name": "ppo", "config": TINY_TEACHER})
    path = tmp_path_factory.mktemp("op") / "op.safetensors"
    ckpt.save(path, op, summary={})
    return path


@pytest.fixture(scope="module")
def dr_policy(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A DR policy from two PPO updates alternating over two training tasks."""
    out = tmp_path_factory.mktemp("dr") / "run"
    return train_dr(DRConfig(task=TaskConfig("halfcheetah_vel"), ppo=PPOConfig(**TINY_TEACHER), n_tasks=2,
                             iterations=2, out=str(out)))


def _config(operator_path: pathlib.Path, out: pathlib.Path, **changes: object) -> ApplyConfig:
    settings: dict[str, object] = dict(operator_path=str(operator_path), out=str(out),
                                       task=TaskConfig("halfcheetah_vel"), n_tasks=1, seeds=2, applications=2,
                                       eval_episodes=1, workers=1)
    settings.update(changes)
    return ApplyConfig(**settings)  # type: ignore[arg-type]


def _rows(path: pathlib.Path) -> list[dict[str, str]]:
    with (path / "curves.csv").open() as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------- task distance


def test_task_distance_normalizes_each_quantity_by_its_training_range() -> None:
    task = get_family("halfcheetah_vel").task("test", 0)
    assert task_distance(task, task) == 0.0
    # The target velocity's training range is [0, 1.5]: a gap of its whole width is distance 1.
    faster = dataclasses.replace(task, params=(("target_velocity", task.param("target_velocity") + 1.5),))
    assert task_distance(task, faster) == pytest.approx(1.0)
    # Masses 1.5× heavier everywhere: log-scale gap 1 against an exponent range of width 6 -> 1/6.
    heavier = dataclasses.replace(task, physics=dataclasses.replace(
        task.physics, body_mass=tuple(m * 1.5 for m in task.physics.body_mass)))
    assert task_distance(task, heavier) == pytest.approx(1 / 6)
    assert task_distance(faster, heavier) == pytest.approx(task_distance(heavier, faster))


def test_nearest_picks_the_run_of_an_identical_task(reference_dataset: pathlib.Path) -> None:
    runs = training_runs(str(reference_dataset))
    for run in runs[::2]:
        assert nearest_runs(runs, run.task)[0].task == run.task
    ranked = nearest_runs(runs, runs[2].task, k=len(runs))
    distances = [task_distance(r.task, runs[2].task) for r in ranked]
    assert distances == sorted(distances) and distances[0] == 0.0


# ----------------------------------------------------------------------------------------- averaging


def _random_policy(seed: int, shift: float) -> Policy:
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    norm = ObsNormalizer(rng.normal(shift, 1.0, SPEC.obs_dim), rng.uniform(0.5, 3.0, SPEC.obs_dim), 1000.0)
    return Policy(SPEC, init_params(SPEC, gen) + 0.1 * torch.randn(SPEC.n_params, generator=gen), norm)


def _actions(policy: Policy, obs: torch.Tensor) -> torch.Tensor:
    return forward(policy.spec, policy.theta.double(), policy.normalizer.normalize(obs).double())[0]


def test_averaging_one_function_under_two_normalizers_gives_that_function() -> None:
    p = _random_policy(0, shift=0.0)
    other = _random_policy(1, shift=0.5).normalizer
    # The same function as p, written for another normalizer.
    q = Policy(SPEC, fold_normalizer(SPEC, p.theta.double(), p.normalizer, other).float(), other)
    obs = torch.randn(64, SPEC.obs_dim)  # well inside the clip range of both normalizers
    assert torch.allclose(_actions(q, obs), _actions(p, obs), atol=1e-4)
    avg = average_policies([p, q])
    assert torch.allclose(_actions(avg, obs), _actions(p, obs), atol=1e-4)
    # Averaging the raw θs instead, as if the normalizers were the same, computes something else.
    naive = Policy(SPEC, (p.theta + q.theta) / 2, p.normalizer)
    assert not torch.allclose(_actions(naive, obs), _actions(p, obs), atol=1e-2)


def test_pooled_normalizer_is_the_normalizer_of_all_the_data() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (300, 17)), rng.normal(2, 3, (100, 17))
    na, nb, both = ObsNormalizer.identity(17), ObsNormalizer.identity(17), ObsNormalizer.identity(17)
    na.update(a)
    nb.update(b)
    both.update(np.concatenate([a, b]))
    pooled = pooled_normalizer([na, nb])
    np.testing.assert_allclose(pooled.mean, both.mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(pooled.var, both.var, rtol=1e-6)


def test_shared_init_average_and_noise(reference_dataset: pathlib.Path) -> None:
    runs = training_runs(str(reference_dataset))
    seed0 = [r.final for r in runs if r.seed == 0]
    assert len(seed0) == 3  # 3 tasks share seed 0's θ⁰, and seed 1's group is as large: the lower seed wins
    assert torch.equal(shared_init_average(runs).theta, average_policies(seed0).theta)
    lonely = tuple(dataclasses.replace(r, seed=i) for i, r in enumerate(runs))
    with pytest.raises(UserError, match="share an initialization"):
        shared_init_average(lonely)
    base = runs[0].final
    noisy = add_noise(base, 0.1, torch.Generator().manual_seed(0))
    for name, block in SPEC.unflatten(base.theta).items():
        delta = SPEC.unflatten(noisy.theta)[name] - block
        rms = float(block.square().mean().sqrt())
        assert float(delta.square().mean().sqrt()) == pytest.approx(0.1 * rms, rel=0.5 if block.numel() < 50 else 0.1)


def test_transferred_picks_the_best_final_policy_and_charges_its_episodes(reference_dataset: pathlib.Path) -> None:
    runs = training_runs(str(reference_dataset))
    task = get_family("halfcheetah_vel").task("test", 0)
    chosen, charged = transferred(runs, task, episodes=2, seed=5)
    assert charged == len(runs) * 2 * 256
    scores = [evaluate(r.final, task, 2, seed=5) for r in runs]
    assert chosen is runs[int(np.argmax(scores))].final


# ------------------------------------------------------------------------------------------- guard


@dataclass
class _Batch:
    """A stand-in experience: its score is the quality of the policy that collected it."""

    quality: float
    n_steps: int = 10


def _guarded(deltas: list[float], guard: Guard | None, budget: int, fallback=None, luck=lambda q: 0.0) -> list[Point]:
    """guarded_steps on stand-in policies: numbers (their true quality), improved by ``deltas`` in turn; a batch
    scores the quality plus ``luck(quality)``; verification reads the true quality."""
    steps = iter(deltas)
    return list(guarded_steps(0.0, lambda p, _: _Batch(p + luck(p)), lambda p, _: p + next(steps),  # type: ignore[arg-type]
                              fallback, lambda b: b.quality, guard, batch=lambda _: 10,  # type: ignore[attr-defined]
                              budget=budget))


def _guard(threshold: float, margin: float) -> Guard:
    return Guard(threshold, verify=lambda p: p, verify_steps=5, margin=margin)  # type: ignore[arg-type,return-value]


def test_guard_rolls_back_on_a_forced_drop_and_deploys_only_verified_gains() -> None:
    # The operator improves by 1 except at its 3rd step, a forced drop.
    calls: list[tuple[float, int, int]] = []

    def fallback(best: float, remaining: int, n: int) -> tuple[float, int]:
        calls.append((best, remaining, n))
        return best + 0.5, 10

    points = _guarded([1.0, 1.0, -50.0, 1.0, 1.0, 1.0], _guard(5.0, margin=0.5), budget=100, fallback=fallback)
    # θ⁰ = 0 is verified first (5 steps). Batches of 1 and 2 are new bests: each is verified (5 steps) and
    # deployed. The batch of -48 triggers the rollback to 2 and a teacher step (2.5, 10 steps). 2.5's batch is a
    # new best but beats the deployed 2 by only 0.5, not more: kept out. 3.5 is deployed; 4.5 never collects.
    assert [p.policy for p in points] == [0.0, 1.0, 2.0, 2.0, 2.0, 3.5]
    assert [p.steps for p in points] == [15, 30, 45, 65, 80, 95]
    assert [p.guard_steps for p in points] == [5, 10, 15, 15, 20, 25]
    assert [p.fallbacks for p in points] == [0, 0, 0, 1, 1, 1]
    assert calls == [(2.0, 45, 0)]
    unguarded = _guarded([1.0, 1.0, -50.0, 1.0, 1.0, 1.0, 1.0], None, budget=70)
    assert [p.policy for p in unguarded] == [1.0, 2.0, -48.0, -47.0, -46.0, -45.0, -44.0]
    assert all(p.guard_steps == 0 and p.fallbacks == 0 for p in unguarded)


def test_guard_never_deploys_a_worse_policy_on_a_lucky_batch() -> None:
    # Each step makes the policy worse, but worse policies collect lucky batches that score ever higher: the
    # rollback never fires and every batch is a new best; verification alone keeps θ⁰ deployed.
    points = _guarded([-3.0, 1.0, 1.0, 1.0], _guard(100.0, margin=0.0), budget=60, luck=lambda q: 40 + 10 * q
                      if q < 0 else 0.0)
    assert [p.policy for p in points] == [0.0, 0.0, 0.0, 0.0]
    assert points[-1].guard_steps == 5 * 4  # θ⁰ and each of the three new-best policies
    # A budget with no room for verifying θ⁰ and a batch deploys θ⁰ throughout, unverified and never replaced.
    assert [p.policy for p in _guarded([5.0, 5.0], _guard(100.0, margin=0.0), budget=12)] == [0.0]


def test_guarded_operator_in_apply_counts_fallbacks(operator_path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    # guard_threshold=0 rejects every operator step whose batch is any worse than the best one.
    apply(_config(operator_path, tmp_path / "g", methods=["operator", "operator_guarded"], applications=6,
                  guard_threshold=0.0))
    rows = _rows(tmp_path / "g")
    guarded = [r for r in rows if r["method"] == "operator_guarded"]
    assert max(int(r["fallbacks"]) for r in guarded) >= 1
    assert all(int(r["env_steps"]) <= 6 * BATCH for r in guarded)
    assert all(r["fallbacks"] == "0" for r in rows if r["method"] == "operator")


# --------------------------------------------------------------------------------------- apply runs


ALL = ["operator_guarded", "ppo", "no_update", "nearest", "nearest_noise", "nearest_avg", "avg_weights",
       "transferred", "dr", "dr_ppo"]


def test_every_method_runs_on_the_same_budget_and_is_seeded(operator_path: pathlib.Path,
                                                             reference_dataset: pathlib.Path,
                                                             dr_policy: pathlib.Path, tmp_path: pathlib.Path) -> None:
    config = dict(methods=ALL, budget=SELECTION_STEPS, dataset=str(reference_dataset), dr_policy=str(dr_policy),
                  nearest_k=2)
    apply(_config(operator_path, tmp_path / "a", **config))
    apply(_config(operator_path, tmp_path / "b", **config))
    rows = _rows(tmp_path / "a")
    assert rows == _rows(tmp_path / "b")
    for method in ALL:
        mine = [r for r in rows if r["method"] == method]
        assert max(int(r["env_steps"]) for r in mine) == SELECTION_STEPS, method
    first = {r["method"]: int(r["env_steps"]) for r in rows[::-1]}
    assert first["transferred"] == SELECTION_STEPS and first["nearest"] == 0
    runs = training_runs(str(reference_dataset))
    task = get_family("halfcheetah_vel").task("test", 0)
    nearest = next(r for r in rows if r["method"] == "nearest" and r["seed"] == "0")
    assert float(nearest["return"]) == pytest.approx(evaluate(nearest_runs(runs, task)[0].final, task, 1,
                                                              seed=17), rel=1e-6)
    dr = next(r for r in rows if r["method"] == "dr" and r["seed"] == "0")
    assert float(dr["return"]) == pytest.approx(evaluate(load_policy(dr_policy), task, 1, seed=17), rel=1e-6)


def test_train_init_starts_from_the_training_runs_theta0(operator_path: pathlib.Path,
                                                          reference_dataset: pathlib.Path) -> None:
    _, ckpt = OperatorCheckpoint.load(operator_path)
    config = _config(operator_path, pathlib.Path("unused"), start="train_init", dataset=str(reference_dataset))
    runs = training_runs(str(reference_dataset))
    for seed in (0, 1, 2):
        want = next(r for r in runs if r.seed == seed % 2).first.theta
        assert torch.equal(initial_policy(config, ckpt, seed).theta, want)
    fresh = initial_policy(_config(operator_path, pathlib.Path("unused")), ckpt, 0)
    assert not torch.equal(fresh.theta, runs[0].first.theta)


def test_every_teacher_is_a_method() -> None:
    assert set(TEACHERS) <= set(method_names())


def test_dr_stage_alternates_tasks(dr_policy: pathlib.Path) -> None:
    with (dr_policy.parent / "log.csv").open() as f:
        tasks = [r["task"] for r in csv.DictReader(f)]
    assert tasks == ["halfcheetah_vel/train/0", "halfcheetah_vel/train/1"]
    assert load_policy(dr_policy).spec == SPEC


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"methods": ["operator", "magic"]}, "unknown methods ['magic']; choose from ['operator', 'operator_guarded'"),
        ({"budget": BATCH - 1}, f"smaller than one batch of the operator's teacher ({BATCH} steps)"),
        ({"methods": ["nearest"]}, "need(s) dataset=<dir>, the operator's training runs; collect them with "
                                   "`metaimprove collect task=halfcheetah_vel"),
        ({"start": "train_init"}, "start=train_init need(s) dataset=<dir>"),
        ({"methods": ["dr_ppo"]}, "need(s) dr_policy=<file>; train it with `metaimprove dr task=halfcheetah_vel"),
        ({"methods": ["transferred"], "dataset": "{data}"}, "transferred's selection costs 1536 env steps"),
        ({"start": "somewhere"}, "start must be one of ['fresh', 'train_init']"),
    ],
)
def test_bad_input_is_a_one_line_error(changes: dict[str, object], problem: str, operator_path: pathlib.Path,
                                       reference_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    changes = {k: v.format(data=reference_dataset) if isinstance(v, str) else v for k, v in changes.items()}
    with pytest.raises(UserError) as info:
        apply(_config(operator_path, tmp_path / "out", **changes))
    assert problem in str(info.value)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_cli_names_the_command_that_makes_missing_data(operator_path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    result = run_cli(["apply", f"operator_path={operator_path}", "methods=[dr]", f"out={tmp_path / 'out'}"],
                     cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "metaimprove dr task=halfcheetah_vel" in lines[0]
    assert not (tmp_path / "out").exists()



def test_operator_batch_is_its_teachers_batch_for_every_teacher() -> None:
    # An operator trained on ARS pairs improves from ARS-shaped batches: one env per perturbed policy.
    whole = FeatureConfig()
    ars = SimpleNamespace(teacher={"name": "ars", "config": {"n_directions": 4, "n_steps": 64}}, features=whole)
    ppo = SimpleNamespace(teacher={"name": "ppo", "config": {"n_envs": 3, "n_steps": 32}}, features=whole)
    assert operator_batch(ars) == (8, 64)  # type: ignore[arg-type]
    assert operator_batch(ppo) == (3, 32)  # type: ignore[arg-type]
    # Trained to read a subset of its teacher's envs, it collects batches that wide.
    narrow = FeatureConfig(envs=2)
    assert operator_batch(SimpleNamespace(teacher=ars.teacher, features=narrow)) == (2, 64)  # type: ignore[arg-type]
    assert operator_batch(SimpleNamespace(teacher=ppo.teacher, features=narrow)) == (2, 32)  # type: ignore[arg-type]
