"""apply: every method on the same budget and seeded, starts, warm-ups, the guarded operator, bad input, resuming,
seed_start, one writer per out, unfinished checkpoints."""

from __future__ import annotations

import csv
import json
import logging
import pathlib

import pytest
import torch

from metaimprove import seeds
from metaimprove.errors import UserError
from metaimprove.evaluation import apply as apply_module
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.baselines import nearest_runs, training_runs
from metaimprove.evaluation.methods import method_names
from metaimprove.evaluation.protocol import ApplyConfig, Job, initial_policy
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig, task_vector
from metaimprove.sim.envs import UserEnv
from metaimprove.sim.policy import load_policy, save_policy
from metaimprove.sim.rollout import evaluate
from metaimprove.sim.tasks import TaskConfig, get_family
from metaimprove.storage import meta_path
from metaimprove.teachers import TEACHERS
from metaimprove.training.train import TrainConfig, train
from tests.helpers import (
    TINY_ARS,
    TINY_TEACHER,
    TINY_TRAIN,
    apply_config,
    curve_rows,
    held_by_another_process,
    run_cli,
)

BATCH = TINY_TEACHER["n_envs"] * TINY_TEACHER["n_steps"]
# 6 training runs × 1 selection episode × 256 steps: the budget must pay for transferred's selection.
SELECTION_STEPS = 6 * 256
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _apply(operator: pathlib.Path, out: pathlib.Path, **changes: object) -> pathlib.Path:
    """The operator alone, on one seed of one halfcheetah_vel task."""
    settings: dict[str, object] = dict(operator_path=str(operator), out=str(out), task=TaskConfig("halfcheetah_vel"),
                                       n_tasks=1, seeds=1, applications=2, eval_episodes=1, workers=1,
                                       methods=["operator"])
    return apply(ApplyConfig(**{**settings, **changes}))  # type: ignore[arg-type]


def test_guarded_operator_in_apply_counts_fallbacks(operator_path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    # guard_threshold=0 rejects every operator step whose batch is any worse than the best one.
    apply(apply_config(operator_path, tmp_path / "g", methods=["operator", "operator_guarded"], applications=6,
                       guard_threshold=0.0))
    rows = curve_rows(tmp_path / "g")
    guarded = [r for r in rows if r["method"] == "operator_guarded"]
    assert max(int(r["fallbacks"]) for r in guarded) >= 1
    assert all(int(r["env_steps"]) <= 6 * BATCH for r in guarded)
    assert all(r["fallbacks"] == "0" for r in rows if r["method"] == "operator")


ALL = ["operator_guarded", "ppo", "no_update", "nearest", "nearest_noise", "nearest_avg", "avg_weights",
       "transferred", "dr", "dr_ppo"]


def test_every_method_runs_on_the_same_budget_and_is_seeded(operator_path: pathlib.Path,
                                                             reference_dataset: pathlib.Path,
                                                             dr_policy: pathlib.Path, tmp_path: pathlib.Path) -> None:
    config = dict(methods=ALL, budget=SELECTION_STEPS, dataset=str(reference_dataset), dr_policy=str(dr_policy),
                  nearest_k=2)
    apply(apply_config(operator_path, tmp_path / "a", **config))
    apply(apply_config(operator_path, tmp_path / "b", **config))
    rows = curve_rows(tmp_path / "a")
    assert rows == curve_rows(tmp_path / "b")
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


def test_curves_equal_the_committed_validation_rows(tmp_path: pathlib.Path) -> None:
    """The shipped operator (plain and guarded), PPO and the unchanged start on the first validation task and seed,
    at a small budget, write exactly the rows results/improvement_validation.csv holds for those points (a run's
    rows up to a budget do not depend on the budget, but for guarded verifications skipped near its end, none at
    this one): apply's batched evaluation gives the committed returns, to 1 % (a CPU of another instruction set than
    the one that wrote them rounds differently, and rollouts grow that: 0.2 % at most on an AVX2 machine; see
    docs/reproducibility.md)."""
    methods = ["operator", "operator_guarded", "ppo", "no_update"]
    apply(ApplyConfig(operator_path=str(ROOT / "results" / "operators" / "halfcheetah_vel.safetensors"),
                      out=str(tmp_path), task=TaskConfig("halfcheetah_vel"), split="train", task_start=32, n_tasks=1,
                      seeds=1, budget=6144, methods=methods, workers=1))
    with (ROOT / "results" / "improvement_validation.csv").open() as f:
        committed = {(r["method"], r["env_steps"]): r for r in csv.DictReader(f)
                     if r["task"] == "halfcheetah_vel/train/32" and r["seed"] == "0"}
    rows = curve_rows(tmp_path)
    assert {r["method"] for r in rows} == set(methods) and len(rows) >= 20
    for row in rows:
        mine, theirs = dict(row), dict(committed[row["method"], row["env_steps"]])
        assert float(mine.pop("return")) == pytest.approx(float(theirs.pop("return")), rel=0.01)
        assert mine == theirs


def test_train_init_starts_from_the_training_runs_theta0(operator_path: pathlib.Path,
                                                          reference_dataset: pathlib.Path) -> None:
    _, ckpt = OperatorCheckpoint.load(operator_path)
    config = apply_config(operator_path, pathlib.Path("unused"), start="train_init", dataset=str(reference_dataset))
    runs = training_runs(str(reference_dataset))
    for seed in (0, 1, 2):
        want = next(r for r in runs if r.seed == seed % 2).first.theta
        assert torch.equal(initial_policy(config, ckpt, seed).theta, want)
    fresh = initial_policy(apply_config(operator_path, pathlib.Path("unused")), ckpt, 0)
    assert not torch.equal(fresh.theta, runs[0].first.theta)


def test_the_learned_start_is_the_file_beside_the_operator_or_learned_start(operator_path: pathlib.Path,
                                                                          tmp_path: pathlib.Path) -> None:
    """start=learned and operator_learned_start begin from <operator>.start.safetensors, or from learned_start=; a
    rerun with another file there is not served the runs of the first."""
    _, ckpt = OperatorCheckpoint.load(operator_path)
    operator = tmp_path / "op.safetensors"
    operator.write_bytes(operator_path.read_bytes())
    meta_path(operator).write_bytes(meta_path(operator_path).read_bytes())
    beside = tmp_path / "op.start.safetensors"
    save_policy(beside, initial_policy(apply_config(operator, pathlib.Path("unused")), ckpt, 7))
    own = tmp_path / "own.safetensors"
    save_policy(own, initial_policy(apply_config(operator, pathlib.Path("unused")), ckpt, 8))
    for changes, want in (({}, beside), ({"learned_start": str(own)}, own)):
        config = apply_config(operator, pathlib.Path("unused"), start="learned", **changes)
        assert torch.equal(initial_policy(config, ckpt, 0).theta, load_policy(want).theta)
    task = get_family("halfcheetah_vel").task("test", 0)
    for changes, want in (({}, beside), ({"learned_start": str(own)}, own)):
        _apply(operator, tmp_path / "out", methods=["operator_learned_start"], **changes)
        first = curve_rows(tmp_path / "out")[0]
        assert float(first["return"]) == evaluate(load_policy(want), task, 1, seed=seeds.evaluation(0))


def test_every_teacher_is_a_method() -> None:
    assert set(TEACHERS) <= set(method_names())


def test_a_warm_up_collects_narrow_batches_first_and_the_op_batch_teacher_follows_it(
        ars_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    full = 2 * TINY_ARS.n_directions * TINY_ARS.n_steps  # 4 envs
    settings = {**TINY_TRAIN, "features": FeatureConfig(n_transitions=32, n_states=16, warmup=[[2, full]])}
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
    path = train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "op"), **TINY_TRAIN))  # type: ignore[arg-type]
    out = tmp_path / "apply"
    with pytest.raises(UserError, match=problem) as error:
        apply(ApplyConfig(operator_path=str(path), out=str(out), n_tasks=1, seeds=1, applications=1,
                          warmup=warmup, methods=["operator"]))
    assert "\n" not in str(error.value) and not out.exists()
    with pytest.raises(UserError, match=problem):
        features = FeatureConfig(n_transitions=32, n_states=16, warmup=warmup)
        train(TrainConfig(dataset=str(ars_dataset), out=str(tmp_path / "bad"), **{**TINY_TRAIN, "features": features}))  # type: ignore[arg-type]
    header = json.loads(meta_path(path).read_text())
    header["meta"]["features"]["warmup"] = warmup
    meta_path(path).write_text(json.dumps(header))
    if problem not in ("must be even", "not narrower"):  # the checkpoint alone cannot tell; apply refuses it as above
        with pytest.raises(UserError, match=f"operator checkpoint .* is invalid: .*{problem}"):
            OperatorCheckpoint.load(path)


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
        ({"start": "somewhere"}, "start must be one of ['fresh', 'train_init', 'learned']"),
        ({"start": "learned"}, "start=learned need(s) the operator's learned start, and "),
        ({"methods": ["operator_learned_start"], "learned_start": "{data}/none.safetensors"},
         "operator_learned_start need(s) the operator's learned start, and "),
    ],
)
def test_bad_input_is_a_one_line_error(changes: dict[str, object], problem: str, operator_path: pathlib.Path,
                                       reference_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    changes = {k: v.format(data=reference_dataset) if isinstance(v, str) else v for k, v in changes.items()}
    with pytest.raises(UserError) as info:
        apply(apply_config(operator_path, tmp_path / "out", **changes))
    assert problem in str(info.value)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_cli_names_the_command_that_makes_missing_data(operator_path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    result = run_cli(["apply", f"operator_path={operator_path}", "methods=[dr]", f"out={tmp_path / 'out'}"],
                     cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "metaimprove dr task=halfcheetah_vel" in lines[0]
    assert not (tmp_path / "out").exists()


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


# ------------------------------------------------------------------------------------------ resume


def _count_runs(monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None) -> list[str]:
    """Record each run apply starts (method/seed) in the returned list; with ``fail_after``, interrupt the run that
    follows that many."""
    started: list[str] = []
    real = apply_module.run_job

    def counted(config: ApplyConfig, job: Job) -> object:
        if fail_after is not None and len(started) == fail_after:
            raise KeyboardInterrupt
        started.append(f"{job.method}/{job.seed}")
        return real(config, job)

    monkeypatch.setattr(apply_module, "run_job", counted)
    return started


def test_an_interrupted_apply_resumes_to_the_same_curves(operator_path: pathlib.Path, tmp_path: pathlib.Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    settings = dict(methods=["operator", "no_update"], seeds=2)
    apply(apply_config(operator_path, tmp_path / "whole", **settings))
    with monkeypatch.context() as patch:
        _count_runs(patch, fail_after=3)
        with pytest.raises(KeyboardInterrupt):
            apply(apply_config(operator_path, tmp_path / "part", **settings))
    assert len(list((tmp_path / "part" / "runs").rglob("*.json"))) == 3  # each finished run, as it finished
    assert not (tmp_path / "part" / "curves.csv").exists()
    started = _count_runs(monkeypatch)
    apply(apply_config(operator_path, tmp_path / "part", **settings))
    assert started == ["no_update/1"]  # only the run left
    assert (tmp_path / "part" / "curves.csv").read_bytes() == (tmp_path / "whole" / "curves.csv").read_bytes()
    timings = [(tmp_path / run / "timings.csv").read_text().count("\n") for run in ("part", "whole")]
    assert timings[0] == timings[1] > 1
    apply(apply_config(operator_path, tmp_path / "part", **settings))
    assert started == ["no_update/1"]  # a finished apply reruns nothing
    # Another setting that shapes a run, or another operator file at the same path, redoes the runs.
    apply(apply_config(operator_path, tmp_path / "part", **settings, eval_episodes=2))
    assert len(started) == 5
    other = tmp_path / "op" / "operator.safetensors"
    other.parent.mkdir()
    for path in (operator_path, meta_path(operator_path)):
        (other.parent / path.name.replace("op.", "operator.")).write_bytes(path.read_bytes())
    apply(apply_config(other, tmp_path / "moved", **settings))
    started.clear()
    apply(apply_config(other, tmp_path / "moved", **settings))
    assert started == []
    apply(apply_config(operator_path, tmp_path / "moved", **settings))
    assert started == []  # the same operator's contents at another path: its runs are served
    op, ckpt = OperatorCheckpoint.load(other)
    with torch.no_grad():
        next(op.parameters()).add_(0.01)
    ckpt.save(other, op, summary={})
    apply(apply_config(other, tmp_path / "moved", **settings))
    assert len(started) == 4


def test_seed_start_runs_the_later_seeds_of_a_longer_run(operator_path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    both = curve_rows(apply(apply_config(operator_path, tmp_path / "both", seeds=2)).parent)
    second = curve_rows(apply(apply_config(operator_path, tmp_path / "second", seeds=1, seed_start=1)).parent)
    assert second and second == [r for r in both if r["seed"] == "1"]
    with pytest.raises(UserError, match="seed_start must be >= 0"):
        apply(apply_config(operator_path, tmp_path / "bad", seed_start=-1))


def test_a_second_apply_into_the_same_out_is_refused(operator_path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with held_by_another_process(tmp_path / "out") as out, \
            pytest.raises(UserError, match=r"being written by another process \(apply refuses"):
        apply(apply_config(operator_path, out))
    assert list(out.iterdir()) == []


def test_apply_warns_in_one_line_about_an_unfinished_checkpoint(operator_path: pathlib.Path, tmp_path: pathlib.Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    op, ckpt = OperatorCheckpoint.load(operator_path)
    unfinished = tmp_path / "unfinished.safetensors"
    ckpt.save(unfinished, op, summary={"complete": False})
    for path, warned in ((operator_path, False), (unfinished, True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="metaimprove"):
            apply(apply_config(operator_path=path, out=tmp_path / path.stem, seeds=1))
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == warned
        assert all("has not finished" in w and "\n" not in w for w in warnings)
