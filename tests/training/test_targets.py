"""Pair targets that carry task knowledge (``pairs.targets`` best and best_across_seeds) and run weights
(``pairs.weight_by_improvement``)."""

from __future__ import annotations

import math
import pathlib

import pytest
import torch

from metaimprove import cli
from metaimprove.data.collect import collect, load_manifest, load_shard
from metaimprove.errors import UserError
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.sim.policy import ObsNormalizer, PolicySpec, fold_normalizer
from metaimprove.training.pairs import PairConfig, Pairs, build_pairs
from metaimprove.training.train import TrainConfig, pair_weights, train
from tests.helpers import TINY_ARS, TINY_TRAIN, tiny_config

FEATURES = FeatureConfig(n_transitions=16, n_states=8, es_gradient=True)
ITERATIONS = 5


@pytest.fixture(scope="module")
def seeds_dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A tiny ARS collection with room for a best later than the next step: 2 tasks × 2 seeds × 5 updates."""
    out = tmp_path_factory.mktemp("seeds") / "data"
    collect(tiny_config(out, teacher=TINY_ARS, n_tasks=2, seeds=2, iterations=ITERATIONS, workers=1))
    return out


def _runs(dataset: pathlib.Path) -> list[dict[str, object]]:
    """Each run of ``dataset`` in manifest order: its task, θs, normalizers and batch mean reward per step r̄."""
    runs = []
    for entry in load_manifest(dataset):
        t, meta = load_shard(dataset, entry)
        norms = [ObsNormalizer(t["norm_mean"][n].double().numpy(), t["norm_var"][n].double().numpy(),
                               float(t["norm_count"][n])) for n in range(len(t["norm_mean"]))]
        runs.append({"task": entry["task_name"], "theta": t["theta"], "norms": norms,
                     "rate": t["reward"].double().mean(dim=(1, 2)), "spec": PolicySpec.from_dict(meta["policy_spec"])})
    return runs


def _check_best(pairs: Pairs, runs: list[dict[str, object]], across_seeds: bool) -> list[int]:
    """Assert that each pair's target is the highest-r̄ later θ (of its run, or of any run of its task), folded into
    the source's next normalizer, with the ask [log2 jump, r̄ difference]; returns the jumps."""
    jumps = []
    for p in range(len(pairs.source)):
        i, n = divmod(int(pairs.source[p]), ITERATIONS)
        searched = [j for j, run in enumerate(runs) if run["task"] == runs[i]["task"]] if across_seeds else [i]
        rate, j, m = max((float(runs[j]["rate"][m]), j, m) for j in searched for m in range(n + 1, ITERATIONS))
        expected = fold_normalizer(runs[i]["spec"], runs[j]["theta"][m].double(), runs[j]["norms"][m],
                                   runs[i]["norms"][n + 1]).float()
        assert torch.equal(pairs.targets[p], expected)
        assert int(pairs.target_item[p]) == j * ITERATIONS + m and pairs.task_of_pair[p] == runs[i]["task"]
        assert pairs.ask[p, 0].item() == pytest.approx(math.log2(m - n))
        assert pairs.ask[p, 1].item() == pytest.approx(rate - float(runs[i]["rate"][n]), rel=1e-5, abs=1e-7)
        jumps.append(m - n)
    return jumps


def test_best_targets_are_the_best_later_policy_of_the_run(seeds_dataset: pathlib.Path) -> None:
    pairs = build_pairs(seeds_dataset, PairConfig(targets="best"), FEATURES)
    runs = _runs(seeds_dataset)
    assert len(pairs.source) == len(runs) * (ITERATIONS - 1)  # one pair per iteration with a later one
    jumps = _check_best(pairs, runs, across_seeds=False)
    assert max(jumps) > 1  # the collection has runs whose best is not the next step: the test tells them apart
    # The same encodings as the k-step pairs: only the targets differ.
    nxt = build_pairs(seeds_dataset, PairConfig(ks=[1]), FEATURES)
    assert all(torch.equal(pairs.items[k], nxt.items[k]) for k in nxt.items)


def test_best_across_seeds_searches_every_run_of_the_task(seeds_dataset: pathlib.Path) -> None:
    pairs = build_pairs(seeds_dataset, PairConfig(targets="best_across_seeds"), FEATURES)
    runs = _runs(seeds_dataset)
    _check_best(pairs, runs, across_seeds=True)
    other = [p for p in range(len(pairs.source))
             if int(pairs.target_item[p]) // ITERATIONS != int(pairs.source[p]) // ITERATIONS]
    assert other  # some targets come from the other seed
    assert sorted(set(pairs.task_of_pair)) == sorted({run["task"] for run in runs})


@pytest.mark.parametrize("targets", ["next", "best"])
def test_runs_weigh_by_their_improvement(seeds_dataset: pathlib.Path, targets: str) -> None:
    runs = _runs(seeds_dataset)
    gains = torch.tensor([max(0.0, float(run["rate"][-1] - run["rate"][0])) for run in runs])
    pairs = build_pairs(seeds_dataset, PairConfig(ks=[1, 2], targets=targets, weight_by_improvement=True), FEATURES)
    of_run = pairs.source // ITERATIONS
    torch.testing.assert_close(pairs.weight, (gains / gains.mean()).float()[of_run])
    plain = TrainConfig(normalize_by_k=False, pairs=PairConfig(weight_by_improvement=True))
    assert torch.equal(pair_weights(pairs, torch.arange(len(pairs.source)), plain), pairs.weight)
    # Off, every pair weighs 1, as before the setting existed.
    unweighted = build_pairs(seeds_dataset, PairConfig(ks=[1, 2], targets=targets), FEATURES)
    assert unweighted.run_weight is None and torch.equal(unweighted.weight, torch.ones(len(pairs.source)))


@pytest.mark.parametrize(("targets", "message"), [
    ("bogus", r"pairs.targets=bogus is not a kind of target; give one of \['next', 'best', 'best_across_seeds'\]"),
    ("best_across_seeds", "compares the seeds of a task, but dataset .* holds one run per task")])
def test_bad_targets_are_refused_in_one_line_before_anything_is_written(ars_dataset: pathlib.Path,
                                                                        tmp_path: pathlib.Path, targets: str,
                                                                        message: str) -> None:
    out = tmp_path / "op"
    config = TrainConfig(dataset=str(ars_dataset), out=str(out), **{**TINY_TRAIN,  # type: ignore[arg-type]
                                                                   "pairs": PairConfig(ks=[1], targets=targets)})
    with pytest.raises(UserError, match=message) as err:
        train(config)
    assert "\n" not in str(err.value) and not out.exists()


def test_train_with_best_targets_runs_end_to_end(seeds_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "op"
    code = cli.main(["train", f"dataset={seeds_dataset}", f"out={out}", "pairs.targets=best",
                     "pairs.weight_by_improvement=true", "pairs.ks=[1,2]", "pairs.val_fraction=0.5",
                     "operator.hidden=16", "operator.context_dim=8", "operator.param_hidden=8",
                     "features.n_transitions=16", "features.n_states=8", "max_epochs=2"])
    assert code == 0
    _, ckpt = OperatorCheckpoint.load(out / "operator.safetensors")
    assert ckpt.ks == [1, 2] and 1 in ckpt.quantiles_ks()  # the best one step ahead gives k = 1's ask range
    assert (out / "metrics.csv").read_text().count("\n") == 3  # a header and two epochs
