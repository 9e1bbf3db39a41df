"""Operators trained on a parameter-space teacher (ARS): τ's perturbations as features, the learned ES step, and
collection at apply time as the teacher explores."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from conftest import tiny_config

from metaimprove.data.collect import collect, load_manifest, load_shard
from metaimprove.errors import UserError
from metaimprove.evaluation.apply import ApplyConfig, apply
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import ENV_STATS, FeatureConfig, env_subset, perturbation_features, transition_dim
from metaimprove.operator.networks import ImprovementOperator, OperatorConfig
from metaimprove.operator.runtime import BatchSchedule, operator_batch, operator_explorer
from metaimprove.sim.envs import default_task
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import Experience
from metaimprove.sim.tasks import TaskConfig
from metaimprove.storage import meta_path
from metaimprove.teachers import ARSConfig
from metaimprove.training.pairs import PairConfig, Pairs, run_pairs
from metaimprove.training.train import TrainConfig, fit, train

SPEC = PolicySpec(5, 2, hidden=(8, 8))
# An operator checkpoint as written before task_input, es_gradient, envs and the recorded ask existed (the PPO
# operator once shipped as results/operators/halfcheetah_vel.ppo.*).
LEGACY = pathlib.Path(__file__).resolve().parent / "fixtures" / "legacy_operator.safetensors"
TINY_ARS = ARSConfig(n_directions=2, top_b=1, n_steps=32)
SMALL = {"operator": OperatorConfig(hidden=16, context_dim=8, param_hidden=8),
         "features": FeatureConfig(n_transitions=32, n_states=16), "pairs": PairConfig(ks=[1]), "max_epochs": 2}


def _experience(returns: list[float], perturbation: torch.Tensor | None) -> Experience:
    E = len(returns)
    reward = torch.tensor(returns).repeat(4, 1) / 4  # 4 steps per env summing to each env's return
    return Experience(obs=torch.zeros(4, E, 3), action=torch.zeros(4, E, 1), log_prob=torch.zeros(4, E),
                      reward=reward, terminated=torch.zeros(4, E, dtype=torch.bool),
                      truncated=torch.zeros(4, E, dtype=torch.bool), trunc_obs=torch.zeros(0, 3),
                      trunc_index=torch.zeros(0, 2, dtype=torch.long), episode_returns=torch.zeros(0), n_unstable=0,
                      perturbation=perturbation)


def test_perturbation_features_pair_each_env_with_its_antithetic_partner() -> None:
    eps = torch.randn(2, 7, generator=torch.Generator().manual_seed(0))
    pert, stats = perturbation_features(_experience([1.0, 4.0, 3.0, 0.0], torch.cat([eps, -eps])), 7)
    assert torch.allclose(pert.square().mean(), torch.tensor(1.0))  # unit RMS
    assert torch.allclose(pert[:2] / pert[:2].norm(), eps / eps.norm())
    z, rank, partner_z, better_rank = stats.unbind(-1)
    assert rank.tolist() == pytest.approx([-1 / 6, 0.5, 1 / 6, -0.5])
    assert torch.equal(partner_z, z[[2, 3, 0, 1]])  # env k ran θ + ε_k, env 2 + k ran θ − ε_k
    # pair 0 is better by max(1, 3) = 3, pair 1 by max(4, 0) = 4: both of a pair share its average rank
    assert better_rank.tolist() == pytest.approx([-1 / 3, 1 / 3, -1 / 3, 1 / 3])
    # Without antithetic pairs every env is its own partner; without perturbations they are zeros.
    _, stats = perturbation_features(_experience([1.0, 4.0, 3.0, 0.0], torch.randn(4, 7)), 7)
    assert torch.equal(stats[:, 2], stats[:, 0]) and torch.equal(stats[:, 3], stats[:, 1])
    pert, _ = perturbation_features(_experience([1.0, 4.0], None), 7)
    assert torch.equal(pert, torch.zeros(2, 7))


def _es_features(n: int, n_envs: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = SPEC.n_params
    half = torch.randn(n, n_envs // 2, p, generator=g)
    pert = torch.cat([half, -half], dim=1)
    returns = torch.randn(n, n_envs, generator=g)
    z = (returns - returns.mean(1, keepdim=True)) / returns.std(1, keepdim=True)
    partner = torch.arange(n_envs).roll(n_envs // 2)
    stats = torch.stack([z, torch.zeros_like(z), z[:, partner], torch.zeros_like(z)], dim=-1)
    return {"theta": torch.stack([init_params(SPEC, g) for _ in range(n)]),
            "grad": torch.randn(n, p, generator=g), "grad_log_norm": torch.randn(n, 1, generator=g),
            "grad_snr": torch.randn(n, p, generator=g),
            "transitions": torch.randn(n, 16, transition_dim(SPEC), generator=g),
            "returns": torch.randn(n, 2, generator=g), "states": torch.randn(n, 32, SPEC.obs_dim, generator=g),
            "norm_mean": torch.zeros(n, SPEC.obs_dim), "norm_std": torch.ones(n, SPEC.obs_dim),
            "perturbation": pert, "env_returns": stats}


@pytest.mark.parametrize("arch", ["flat", "per_param"])
def test_es_operator_is_the_identity_at_init_and_reads_the_perturbations(arch: str) -> None:
    op = ImprovementOperator(SPEC, OperatorConfig(arch=arch, hidden=16, context_dim=8, param_hidden=8), es=True)
    feats, ask = _es_features(3), torch.randn(3, 2)
    torch.testing.assert_close(op(feats, ask), feats["theta"])
    torch.nn.init.normal_(op.update.es.weight[-1].weight)
    moved = op(feats, ask)
    assert not torch.allclose(moved, feats["theta"])
    still = op({**feats, "perturbation": torch.zeros_like(feats["perturbation"])}, ask)
    assert (still - feats["theta"]).abs().max() < 1e-6  # no perturbations (a PPO batch): no ES step
    assert feats["env_returns"].shape[-1] == ENV_STATS


def test_es_operator_learns_an_antithetic_es_step_that_the_plain_operator_cannot() -> None:
    # The target is θ + 0.02 Σ_k (r⁺_k − r⁻_k) ε_k: ARS's direction, which is in the perturbations alone.
    n = 300
    feats = _es_features(n)
    z = feats["env_returns"][..., 0]
    step = 0.02 * (z.unsqueeze(-1) * feats["perturbation"]).sum(1) / 2
    idx = torch.arange(n)
    pairs = Pairs(SPEC, feats, feats["theta"] + step, idx, idx, torch.zeros(n, 2),
                  [f"t/{i % 10}" for i in range(n)], {})
    train_idx, val_idx = pairs.select({f"t/{i}" for i in range(8)}), pairs.select({"t/8", "t/9"})
    config = TrainConfig(batch_size=32, lr=3e-3, max_epochs=40, patience=40, param_loss_weight=0.0)
    best = {}
    for es in (False, True):
        torch.manual_seed(0)
        op = ImprovementOperator(SPEC, OperatorConfig(hidden=32, context_dim=8, param_hidden=16), es=es)
        rows = fit(op, pairs, train_idx, val_idx, config)
        best[es] = min(r["val_loss"] for r in rows) / rows[0]["val_identity_loss"]
    assert best[True] < 0.1, best
    assert best[False] > 0.5, best


@pytest.fixture(scope="module")
def ars_dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("ars") / "data"
    collect(tiny_config(out, teacher=TINY_ARS, n_tasks=3, seeds=1, iterations=3, workers=1))
    return out


def test_an_operator_trained_on_ars_reads_its_perturbations_and_collects_as_ars_does(
        ars_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    path = train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "op"), **SMALL))  # type: ignore[arg-type]
    op, ckpt = OperatorCheckpoint.load(path)
    assert ckpt.features.es_gradient is True and op.update.es is not None  # decided from the data
    spec = ckpt.spec
    start = Policy(spec, init_params(spec, torch.Generator().manual_seed(1)), ObsNormalizer.identity(spec.obs_dim))
    exp = operator_explorer(ckpt, default_task("halfcheetah_vel"), start, seed=0)(start, 0)
    assert exp.perturbation is not None and exp.obs.shape[1] == 2 * TINY_ARS.n_directions
    out = apply(ApplyConfig(operator_path=str(path), out=str(tmp_path / "apply"), task=TaskConfig("halfcheetah_vel"),
                            n_tasks=1, seeds=1, applications=2, eval_episodes=1, workers=1,
                            methods=["operator", "operator_guarded", "ars"]))
    methods = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    assert methods.count("operator") == methods.count("ars") == 1 + 2  # the start and two batches each


def test_forged_es_settings_in_a_checkpoint_are_refused(ars_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    path = train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "op"), **SMALL))  # type: ignore[arg-type]
    header = json.loads(meta_path(path).read_text())
    for value, problem in (("yes", "features.es_gradient must be bool"), (False, "weights do not fit")):
        meta = {**header["meta"], "features": {**header["meta"]["features"], "es_gradient": value}}
        meta_path(path).write_text(json.dumps({**header, "meta": meta}))
        with pytest.raises(UserError, match=problem):
            OperatorCheckpoint.load(path)


def test_es_gradient_on_data_without_perturbations_is_a_one_line_error(reference_dataset: pathlib.Path,
                                                                       tmp_path: pathlib.Path) -> None:
    settings = {**SMALL, "features": FeatureConfig(n_transitions=32, n_states=16, es_gradient=True)}
    with pytest.raises(UserError, match=r"record\(s\) no parameter perturbations"):
        train(TrainConfig(dataset=str(reference_dataset), out=str(tmp_path / "op"), **settings))  # type: ignore[arg-type]


def test_checkpoints_from_before_es_features_load_as_operators_without_them() -> None:
    op, ckpt = OperatorCheckpoint.load(LEGACY)
    assert not ckpt.features.es_gradient and op.update.es is None
    assert ckpt.ask_k is None and ckpt.asked_k == 2  # no recorded ask: the trained jump nearest 2


def test_env_subset_keeps_whole_antithetic_pairs_and_renumbers_truncations() -> None:
    eps = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    exp = _experience([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], torch.cat([eps, -eps]))
    exp.trunc_obs, exp.trunc_index = torch.randn(6, 3), torch.tensor([[3, e] for e in range(6)])
    sub = env_subset(exp, 4, torch.Generator().manual_seed(1))
    kept = sub.reward.sum(0).round().long().tolist()  # env e's return is e + 1: which envs were kept
    assert len(kept) == 4 and kept[2:] == [k + 3 for k in kept[:2]] and kept == sorted(kept)
    assert sub.perturbation is not None and torch.equal(sub.perturbation[2:], -sub.perturbation[:2])
    assert sub.trunc_index[:, 1].tolist() == [0, 1, 2, 3]
    assert torch.equal(sub.trunc_obs, exp.trunc_obs[[k - 1 for k in kept]])
    again = env_subset(exp, 4, torch.Generator().manual_seed(1))
    assert torch.equal(again.reward, sub.reward)  # seeded
    assert torch.equal(env_subset(exp, 6, torch.Generator()).reward, exp.reward)  # the whole batch, in order
    with pytest.raises(UserError, match="even number of envs"):
        env_subset(exp, 3, torch.Generator())
    with pytest.raises(UserError, match="between 1 and 2"):
        env_subset(_experience([1.0, 2.0], None), 3, torch.Generator())


def test_whole_batch_subset_targets_match_the_teachers_normalizer(ars_dataset: pathlib.Path) -> None:
    # With every env kept, the normalizer the subset branch folds targets into is the teacher's own next one.
    tensors, meta = load_shard(ars_dataset, load_manifest(ars_dataset)[0])

    def pairs(envs: int | None) -> Pairs:
        features = FeatureConfig(n_transitions=32, n_states=16, es_gradient=True, envs=envs)
        return run_pairs(tensors, meta, PairConfig(ks=[1, 2]), features, torch.Generator().manual_seed(0))

    whole, half = pairs(None), pairs(2)
    torch.testing.assert_close(pairs(2 * TINY_ARS.n_directions).targets, whole.targets, rtol=1e-5, atol=1e-5)
    assert half.batch_shape == (TINY_ARS.n_steps, 2) and half.items["perturbation"].shape[1] == 2
    assert not torch.allclose(half.targets, whole.targets)  # folded into the half batch's normalizer


def test_an_operator_trained_on_part_of_each_batch_collects_that_much(ars_dataset: pathlib.Path,
                                                                      tmp_path: pathlib.Path) -> None:
    settings = {**SMALL, "features": FeatureConfig(n_transitions=32, n_states=16, envs=2)}
    path = train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "op"), **settings))  # type: ignore[arg-type]
    _, ckpt = OperatorCheckpoint.load(path)
    assert ckpt.features.envs == 2 and operator_batch(ckpt) == (2, TINY_ARS.n_steps)
    spec = ckpt.spec
    start = Policy(spec, init_params(spec, torch.Generator().manual_seed(1)), ObsNormalizer.identity(spec.obs_dim))
    exp = operator_explorer(ckpt, default_task("halfcheetah_vel"), start, seed=0)(start, 0)
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
    header["meta"]["features"]["envs"] = "2"
    meta_path(path).write_text(json.dumps(header))
    with pytest.raises(UserError, match=r"features\.envs must be int"):
        OperatorCheckpoint.load(path)


def test_batch_schedule_switches_width_at_the_end_of_each_warm_up_phase() -> None:
    schedule = BatchSchedule(envs=8, n_steps=10, warmup=((2, 40), (4, 100)))
    assert [schedule.envs_at(s) for s in (0, 39, 40, 99, 100, 10**9)] == [2, 2, 4, 4, 8, 8]
    assert schedule.batch_at(0) == 20 and schedule.batch_at(100) == 80
    # The full width keeps the run's own seed (runs without a warm-up collect as before); each width its own.
    assert schedule.seed(3, 8) == 3 and len({schedule.seed(3, e) for e in (2, 4, 8)}) == 3


def test_a_warm_up_collects_narrow_batches_first_and_the_op_batch_teacher_follows_it(
        ars_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    full = 2 * TINY_ARS.n_directions * TINY_ARS.n_steps  # 4 envs
    settings = {**SMALL, "features": FeatureConfig(n_transitions=32, n_states=16, warmup=[[2, full]])}
    path = train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "op"), **settings))  # type: ignore[arg-type]
    _, ckpt = OperatorCheckpoint.load(path)
    assert ckpt.features.warmup == [[2, full]]

    def curves(name: str, **extra: object) -> dict[str, list[tuple[int, float]]]:
        out = apply(ApplyConfig(operator_path=str(path), out=str(tmp_path / name), task=TaskConfig("halfcheetah_vel"),
                                n_tasks=1, seeds=1, applications=3, eval_episodes=1, workers=1,
                                methods=["operator", "teacher_op_batch", "ars"], **extra))  # type: ignore[arg-type]
        found: dict[str, list[tuple[int, float]]] = {}
        for line in out.read_text().splitlines()[1:]:
            method, _, _, steps, ret, *_ = line.split(",")
            found.setdefault(method, []).append((int(steps), float(ret)))
        return found

    # Two 2-env batches (half the width) use the first `full` steps; then full batches until B = 3 full batches.
    warm = curves("recorded")
    scheduled = [0, full // 2, full, 2 * full, 3 * full]
    assert [s for s, _ in warm["operator"]] == [s for s, _ in warm["teacher_op_batch"]] == scheduled
    assert [s for s, _ in warm["ars"]] == [0, full, 2 * full, 3 * full]
    assert curves("again") == warm  # seeded: the same numbers
    plain = curves("plain", warmup=[])  # apply's warmup= overrides the checkpoint's
    assert [s for s, _ in plain["operator"]] == [s for s, _ in plain["teacher_op_batch"]] == [0, full, 2 * full,
                                                                                             3 * full]
    assert plain["ars"] == warm["ars"]


@pytest.mark.parametrize(("warmup", "problem"), [([[3, 64]], "must be even"), ([[2, 64], [2, 64]], "must increase"),
                                                 ([[2]], "pairs of integers"), ([[0, 64]], "envs >= 1"),
                                                 ([[4, 64]], "not narrower")])
def test_a_bad_warm_up_is_a_one_line_error_before_anything_runs(ars_dataset: pathlib.Path, tmp_path: pathlib.Path,
                                                               warmup: list[list[int]], problem: str) -> None:
    path = train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "op"), **SMALL))  # type: ignore[arg-type]
    out = tmp_path / "apply"
    with pytest.raises(UserError, match=problem) as error:
        apply(ApplyConfig(operator_path=str(path), out=str(out), n_tasks=1, seeds=1, applications=1,
                          warmup=warmup, methods=["operator"]))
    assert "\n" not in str(error.value) and not out.exists()
    with pytest.raises(UserError, match=problem):
        features = FeatureConfig(n_transitions=32, n_states=16, warmup=warmup)
        train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "bad"), **{**SMALL, "features": features}))  # type: ignore[arg-type]
    header = json.loads(meta_path(path).read_text())
    header["meta"]["features"]["warmup"] = warmup
    meta_path(path).write_text(json.dumps(header))
    if problem not in ("must be even", "not narrower"):  # the checkpoint alone cannot tell; apply refuses it as above
        with pytest.raises(UserError, match=f"operator checkpoint .* is invalid: .*{problem}"):
            OperatorCheckpoint.load(path)
