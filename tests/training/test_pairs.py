"""Pairs from datasets: unions of datasets, task limits, env subsets, ARS datasets."""

from __future__ import annotations

import pathlib

import pytest
import torch

from metaimprove.data.collect import collect, load_manifest, load_shard
from metaimprove.errors import UserError
from metaimprove.operator.features import FeatureConfig
from metaimprove.teachers import ARSConfig
from metaimprove.training.pairs import PairConfig, Pairs, build_pairs, build_union, dataset_dirs, run_pairs
from tests.helpers import TINY_ARS, tiny_config


def test_union_holds_the_pairs_of_every_dataset(reference_dataset: pathlib.Path,
                                                other_datasets: dict[str, pathlib.Path]) -> None:
    cfg, feats = PairConfig(ks=[1]), FeatureConfig(n_transitions=32, n_states=16)
    one = build_pairs(reference_dataset, cfg, feats)
    union = build_union([str(reference_dataset), str(other_datasets["copy"])], cfg, feats)
    n = len(one.source)
    assert len(union.source) == 2 * n and union.task_of_pair == 2 * one.task_of_pair
    assert torch.equal(union.targets[n:], one.targets)
    # the second dataset's pairs point at its own items, shifted past the first's
    assert (union.source[n:] == one.source + len(one.items["theta"])).all()
    assert torch.equal(union.items["theta"][union.source[n:]], one.items["theta"][one.source])


@pytest.mark.parametrize(("other", "message"), [("hidden", "hold different policy specs"),
                                                ("batch", "collected batches of different shapes")])
def test_union_of_mismatched_datasets_is_refused_naming_both(reference_dataset: pathlib.Path,
                                                             other_datasets: dict[str, pathlib.Path],
                                                             other: str, message: str) -> None:
    dirs = [str(reference_dataset), str(other_datasets[other])]
    with pytest.raises(UserError, match=message) as err:
        build_union(dirs, PairConfig(ks=[1]), FeatureConfig(n_transitions=32, n_states=16))
    assert all(d in str(err.value) for d in dirs) and "\n" not in str(err.value)


def test_dataset_setting_takes_one_directory_a_list_or_a_comma_list() -> None:
    assert dataset_dirs("a") == ["a"]
    assert dataset_dirs(["a", "b"]) == dataset_dirs("a, b") == ["a", "b"]
    with pytest.raises(UserError, match="names no directory"):
        dataset_dirs(" , ")


def test_max_tasks_keeps_the_first_tasks_runs_only(reference_dataset: pathlib.Path) -> None:
    feats = FeatureConfig(n_transitions=32, n_states=16)
    every = build_pairs(reference_dataset, PairConfig(ks=[1]), feats)
    two = build_pairs(reference_dataset, PairConfig(ks=[1], max_tasks=2), feats)
    assert sorted(set(every.task_of_pair)) == [f"halfcheetah_vel/train/{i}" for i in range(3)]
    assert sorted(set(two.task_of_pair)) == ["halfcheetah_vel/train/0", "halfcheetah_vel/train/1"]
    # Same pairs as the full dataset's for those tasks (2 seeds each): a subset, not a different collection.
    kept = [i for i, t in enumerate(every.task_of_pair) if t != "halfcheetah_vel/train/2"]
    assert torch.equal(two.targets, every.targets[kept])
    with pytest.raises(UserError, match=r"pairs.max_tasks=4 but dataset .* holds 3 tasks; give 1 .. 3"):
        build_pairs(reference_dataset, PairConfig(ks=[1], max_tasks=4), feats)


def test_whole_batch_subset_targets_match_the_teachers_normalizer(ars_dataset: pathlib.Path) -> None:
    # With every env kept, the normalizer the subset branch folds targets into is the teacher's own next one.
    tensors, meta = load_shard(ars_dataset, load_manifest(ars_dataset)[0])

    def pairs(envs: int | None) -> Pairs:
        features = FeatureConfig(n_transitions=32, n_states=16, es_gradient=True, n_envs=envs)
        return run_pairs(tensors, meta, PairConfig(ks=[1, 2]), features, torch.Generator().manual_seed(0))

    whole, half = pairs(None), pairs(2)
    torch.testing.assert_close(pairs(2 * TINY_ARS.n_directions).targets, whole.targets, rtol=1e-5, atol=1e-5)
    assert half.batch_shape == (TINY_ARS.n_steps, 2) and half.items["perturbation"].shape[1] == 2
    assert not torch.allclose(half.targets, whole.targets)  # folded into the half batch's normalizer


def test_ars_collection_makes_a_dataset_the_pair_builder_reads(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "data"
    collect(tiny_config(out, teacher=ARSConfig(n_directions=2, top_b=1, n_steps=32), n_tasks=2, seeds=1, workers=1))
    pairs = build_pairs(out, PairConfig(ks=[1, 2]), FeatureConfig(n_transitions=32, n_states=32))
    assert pairs.teacher["name"] == "ars"
    assert len(pairs.targets) == 2  # per run, k = 1 from n = 0 (a target θⁿ⁺ᵏ needs its own τⁿ⁺ᵏ)
    assert torch.isfinite(pairs.targets).all()
    assert all(torch.isfinite(v).all() for v in pairs.items.values() if v.is_floating_point())
