"""The baselines apply compares with: nearest checkpoints, averaged and noisy weights, transferred, DR policies."""

from __future__ import annotations

import csv
import dataclasses
import pathlib

import numpy as np
import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.evaluation.baselines import (
    add_noise,
    average_policies,
    nearest_runs,
    pooled_normalizer,
    shared_init_average,
    training_runs,
    transferred,
)
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, fold_normalizer, forward, init_params, load_policy
from metaimprove.sim.rollout import evaluate
from metaimprove.sim.tasks import get_family, task_distance

SPEC = PolicySpec(17, 6)


def test_nearest_picks_the_run_of_an_identical_task(reference_dataset: pathlib.Path) -> None:
    runs = training_runs(str(reference_dataset))
    for run in runs[::2]:
        assert nearest_runs(runs, run.task)[0].task == run.task
    ranked = nearest_runs(runs, runs[2].task, k=len(runs))
    distances = [task_distance(r.task, runs[2].task) for r in ranked]
    assert distances == sorted(distances) and distances[0] == 0.0


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


def test_dr_stage_alternates_tasks(dr_policy: pathlib.Path) -> None:
    with (dr_policy.parent / "log.csv").open() as f:
        tasks = [r["task"] for r in csv.DictReader(f)]
    assert tasks == ["halfcheetah_vel/train/0", "halfcheetah_vel/train/1"]
    assert load_policy(dr_policy).spec == SPEC
