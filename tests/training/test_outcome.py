"""Outcome training (``metaimprove outcome``): PGPE over the operator's weights on the returns it reaches."""

import dataclasses
import math
import pathlib
import shutil

import numpy as np
import pytest
import torch

from metaimprove import seeds
from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.methods import teacher_steps
from metaimprove.loggers import read_rows
from metaimprove.operator.checkpoint import LEARNED_START_SUFFIX, OperatorCheckpoint
from metaimprove.operator.runtime import BatchSchedule, Explorer, operator_teacher, operator_update
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params, load_policy, save_policy
from metaimprove.sim.rollout import evaluate
from metaimprove.sim.tasks import get_family
from metaimprove.storage import load_tensors, meta_path, sha256_file
from metaimprove.training import outcome as outcome_module
from metaimprove.training.outcome import (
    ROW_FIELDS,
    SHAPINGS,
    TaskOutcome,
    fitness,
    outcome,
    task_outcome,
    task_ranks,
)
from tests.helpers import AGNOSTIC, TINY_ARS, TINY_TRAIN, apply_config, curve_rows
from tests.helpers import tiny_outcome as tiny


def test_each_member_runs_as_apply_would_and_fitness_is_relative_to_the_teacher(moving_operator: pathlib.Path
                                                                                  ) -> None:
    op, ckpt = OperatorCheckpoint.load(moving_operator)
    task, seed, applications, episodes = get_family("halfcheetah_vel").task("train", 0), 5, 3, 2
    ask = ckpt.ask()
    # The operator twice in one population: both copies run side by side and must agree with a run of their own.
    start = ckpt.fresh_policy(seed)  # apply's fresh θ⁰ of run seed
    result = task_outcome([op, op], ckpt, task, seed, start, applications, ask, episodes)

    schedule = BatchSchedule.of(ckpt)
    explore = Explorer(ckpt, task, start, seed, schedule)
    update = operator_update(op, ckpt, task, ask, torch.Generator().manual_seed(seed))
    policy, steps = start, 0
    for _ in range(applications):
        policy = update(policy, explore(policy, steps))
        steps += schedule.batch_at(steps)
    assert not torch.equal(policy.theta, start.theta)
    teacher = list(teacher_steps(operator_teacher(ckpt), task, start, seed, steps, [], schedule))
    assert len(teacher) == applications
    eval_seed = seeds.evaluation(seed)
    r_op = evaluate(policy, task, episodes, eval_seed)
    r_teacher = evaluate(teacher[-1].policy, task, episodes, eval_seed)
    r_start = evaluate(start, task, episodes, eval_seed)
    # The same episodes as evaluate's, bit for bit.
    assert result.returns == (r_op, r_op)
    assert (result.start_return, result.teacher_return) == (r_start, r_teacher)
    # 4 copies (2 operators, the teacher) of every batch, 4 policies' evaluation episodes (with the start).
    assert result.env_steps == 3 * steps + 4 * episodes * get_family("halfcheetah_vel").episode_length
    expected = (r_op - r_teacher) / max(abs(r_teacher - r_start), 1.0)
    assert fitness([result], 1.0).tolist() == pytest.approx([expected, expected], abs=1e-4)


def test_fitness_divides_by_the_teacher_gain_and_averages_over_tasks() -> None:
    runs = [TaskOutcome("a", 0, start_return=-10.0, teacher_return=-6.0, returns=(-10.0, -2.0, -math.inf),
                        env_steps=0),
            TaskOutcome("b", 1, start_return=5.0, teacher_return=5.5, returns=(4.5, 5.5, 6.0), env_steps=0)]
    # Task a: gain 4, so -1 (stayed at the start) and +1 (twice the gain); task b: gain 0.5, below the floor of 1.
    assert fitness(runs, 1.0).tolist() == [(-1.0 - 1.0) / 2, (1.0 + 0.0) / 2, -math.inf]


def test_task_ranks_weigh_every_task_the_same_whatever_its_scale() -> None:
    runs = [TaskOutcome("a", 0, 0.0, 1.0, returns=(1000.0, -1000.0, 0.0, 5.0), env_steps=0),
            TaskOutcome("b", 1, 0.0, 1.0, returns=(0.1, 0.3, 0.2, -math.inf), env_steps=0)]
    # On a: ranks 1, 0, 0.5 of 3 members (the fourth operator, the center, is not ranked); on b: 0, 1, 0.5.
    assert task_ranks(runs, 3).tolist() == [0.0, 0.0, 0.0]
    ties = [TaskOutcome("c", 0, 0.0, 1.0, returns=(2.0, 2.0, -math.inf, 1.0), env_steps=0)]
    assert task_ranks(ties, 3).tolist() == [0.25, 0.25, -0.5]


def test_seeded_and_a_resumed_run_equals_an_uninterrupted_one(moving_operator: pathlib.Path, tmp_path: pathlib.Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny(moving_operator, tmp_path / "whole", generations=3)
    path = outcome(config)
    OperatorCheckpoint.load(path)
    meta = load_tensors(path)[1]
    assert meta["summary"]["objective"] == "outcome" and meta["summary"]["generations"] == 3
    assert meta["summary"]["complete"] is True and len(meta["summary"]["center_fitness"]) == 3
    assert meta["tasks"] == OperatorCheckpoint.load(moving_operator)[1].tasks

    # One generation, then more: stopped in the second, then rerun: the same files, bit for bit.
    resumed = tmp_path / "resumed"
    outcome(tiny(moving_operator, resumed, generations=1))
    real, calls = outcome_module.task_outcome, []

    def stopping(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(outcome_module, "task_outcome", stopping)
    with pytest.raises(KeyboardInterrupt):
        outcome(tiny(moving_operator, resumed, generations=3))
    monkeypatch.setattr(outcome_module, "task_outcome", real)
    assert load_tensors(resumed / "operator.safetensors")[1]["summary"]["complete"] is False
    outcome(tiny(moving_operator, resumed, generations=3))
    assert (resumed / "operator.safetensors").read_bytes() == path.read_bytes()
    state, whole = load_tensors(resumed / "es.safetensors")[0], load_tensors(tmp_path / "whole" / "es.safetensors")[0]
    assert all(torch.equal(state[k], whole[k]) for k in ("center", "velocity", "stdev"))
    # The history too, but for the clock.
    timing = [ROW_FIELDS.index("seconds"), ROW_FIELDS.index("steps_per_second")]
    state["history"][:, timing] = whole["history"][:, timing]
    assert torch.equal(state["history"], whole["history"])
    untimed = [{k: v for k, v in row.items() if k not in ("seconds", "steps_per_second")}
               for row in read_rows(resumed / "metrics.csv") + read_rows(tmp_path / "whole" / "metrics.csv")]
    assert len(untimed) == 6 and untimed[:3] == untimed[3:]

    with pytest.raises(UserError, match=r"other settings.*popsize"):
        outcome(tiny(moving_operator, resumed, popsize=4))
    other = outcome(tiny(moving_operator, tmp_path / "seed1", generations=3, seed=1))
    assert other.read_bytes() != path.read_bytes()


def test_pgpe_climbs_a_toy_fitness(ars_operator: pathlib.Path, tmp_path: pathlib.Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A fitness where learning is certain: minus the distance of each operator's weights from a target.
    op, _ = OperatorCheckpoint.load(ars_operator)
    target = torch.nn.utils.parameters_to_vector(op.parameters()).detach() + 0.1

    def toy(ops, ckpt, task, seed, start, applications, ask, episodes):  # type: ignore[no-untyped-def]
        distance = [float((torch.nn.utils.parameters_to_vector(o.parameters()).detach() - target).norm()) for o in ops]
        return TaskOutcome(task.name, seed, 0.0, -1.0, tuple(-d - 1.0 for d in distance), 1)

    monkeypatch.setattr(outcome_module, "task_outcome", toy)
    for shaping in SHAPINGS:
        out = tmp_path / shaping
        outcome(tiny(ars_operator, out, generations=30, popsize=64, stdev_init=0.01, center_lr=0.05, shaping=shaping))
        rows = read_rows(out / "metrics.csv")
        center = [float(r["center_fitness"]) for r in rows]
        assert center[-1] > center[0] + 0.5
        assert float(rows[-1]["mean_fitness"]) > float(rows[0]["mean_fitness"])


def test_only_the_weights_asked_for_evolve(moving_operator: pathlib.Path, tmp_path: pathlib.Path) -> None:
    source, _ = OperatorCheckpoint.load(moving_operator)
    path = outcome(tiny(moving_operator, tmp_path, generations=1, evolve=["update.rest"]))
    evolved, _ = OperatorCheckpoint.load(path)
    before, after = dict(source.named_parameters()), dict(evolved.named_parameters())
    assert all(torch.equal(before[name], after[name]) != name.startswith("update.rest") for name in before)
    assert load_tensors(path)[1]["summary"]["settings"]["evolve"] == ["update.rest"]


def test_the_evolved_operator_applies(moving_operator: pathlib.Path, tmp_path: pathlib.Path) -> None:
    path = outcome(tiny(moving_operator, tmp_path / "outcome", generations=1))
    apply(apply_config(path, tmp_path / "apply", methods=["operator"], seeds=1))
    assert {row["method"] for row in curve_rows(tmp_path / "apply")} == {"operator"}


def test_an_operator_of_several_robots_evolves_on_each_from_fresh_policies_of_its_sizes(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A shape-agnostic ARS operator whose training tasks span two robots (as train dataset=[...] records them).
    tasks = ["halfcheetah_vel/train/0", "hopper_rand_params/train/0"]
    ckpt = OperatorCheckpoint.from_training(AGNOSTIC, TINY_TRAIN["operator"], PolicySpec(17, 6), [1],  # type: ignore[arg-type]
                                            torch.tensor([[0.0, 0.1]]), tasks,
                                            {"name": "ars", "config": dataclasses.asdict(TINY_ARS)}, ask_k=1)
    torch.manual_seed(0)
    operator = tmp_path / "operator.safetensors"
    ckpt.save(operator, ckpt.new_operator(), summary={})
    real, runs = outcome_module.task_outcome, []

    def recording(ops, ckpt, task, seed, start, applications, ask, episodes):  # type: ignore[no-untyped-def]
        runs.append((task, seed, start))
        return real(ops, ckpt, task, seed, start, applications, ask, episodes)

    monkeypatch.setattr(outcome_module, "task_outcome", recording)
    outcome(tiny(operator, tmp_path / "out", generations=1, tasks=tasks, tasks_per_generation=2))
    assert sorted(task.name for task, _, _ in runs) == tasks
    for task, seed, start in runs:  # apply's fresh θ⁰ for the run, of the robot's sizes
        expected = ckpt.on(task).fresh_policy(seed)
        assert start.spec == expected.spec and torch.equal(start.theta, expected.theta)
    assert {start.spec.obs_dim for _, _, start in runs} == {17, 11}

    # A learned start is one robot's policy: one of HalfCheetah's sizes cannot start the Hopper runs.
    start = a_start(ckpt.spec, tmp_path / "start.safetensors", 3)
    with pytest.raises(UserError, match=r"improves .*obs_dim=11.* on hopper_rand_params/train/0; give tasks="):
        outcome(tiny(operator, tmp_path / "learned", tasks=tasks, start="learned", learned_start=str(start)))
    assert not (tmp_path / "learned").exists()


def a_start(spec: PolicySpec, path: pathlib.Path, seed: int) -> pathlib.Path:
    """A policy file of ``spec`` unlike any fresh start: its own initialization and a normalizer that is no identity."""
    rng = np.random.default_rng(seed)
    theta = init_params(spec, torch.Generator().manual_seed(seed))
    save_policy(path, Policy(spec, theta, ObsNormalizer(rng.normal(size=spec.obs_dim), rng.uniform(0.5, 2.0,
                                                                                                  spec.obs_dim))))
    return path


@pytest.fixture
def with_learned_start(moving_operator: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of the moving operator with a learned start beside it (``operator.start.safetensors``)."""
    operator = tmp_path / "op" / "operator.safetensors"
    operator.parent.mkdir()
    shutil.copy(moving_operator, operator)
    shutil.copy(meta_path(moving_operator), meta_path(operator))
    a_start(OperatorCheckpoint.load(operator)[1].spec, operator.with_name("operator" + LEARNED_START_SUFFIX), 11)
    return operator


def test_start_learned_runs_every_member_the_center_and_the_teacher_from_the_learned_start(
        with_learned_start: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    beside = with_learned_start.with_name("operator" + LEARNED_START_SUFFIX)
    learned = load_policy(beside)
    real, runs = outcome_module.task_outcome, []

    def recording(ops, ckpt, task, seed, start, applications, ask, episodes):  # type: ignore[no-untyped-def]
        result = real(ops, ckpt, task, seed, start, applications, ask, episodes)
        runs.append((task, seed, start, result))
        return result

    monkeypatch.setattr(outcome_module, "task_outcome", recording)
    path = outcome(tiny(with_learned_start, tmp_path / "learned", start="learned"))
    assert len(runs) == 2
    for task, seed, start, result in runs:
        assert torch.equal(start.theta, learned.theta)
        assert np.array_equal(start.normalizer.mean, learned.normalizer.mean)
        # R_start: the learned start's return, with apply's evaluation seed, bit for bit (one policy, one run).
        assert result.start_return == evaluate(learned, task, 1, seeds.evaluation(seed))
    settings = load_tensors(path)[1]["summary"]["settings"]
    assert (settings["start"], settings["learned_start"]) == ("learned", None)
    assert settings["learned_start_sha256"] == sha256_file(beside)

    # From fresh starts the same generations score otherwise; a fresh run records no start (as runs before start=).
    fresh = outcome(tiny(with_learned_start, tmp_path / "fresh"))
    assert not {"start", "learned_start", "learned_start_sha256"} & set(load_tensors(fresh)[1]["summary"]["settings"])
    first = [read_rows(tmp_path / out / "metrics.csv")[0] for out in ("learned", "fresh")]
    assert all(first[0][k] != first[1][k] for k in ("center_fitness", "best_fitness", "teacher_gain"))


def test_a_resume_with_another_start_is_refused(with_learned_start: pathlib.Path, tmp_path: pathlib.Path) -> None:
    own = a_start(OperatorCheckpoint.load(with_learned_start)[1].spec, tmp_path / "own.safetensors", 12)
    outcome(tiny(with_learned_start, tmp_path / "out", generations=1, start="learned", learned_start=str(own)))
    a_start(OperatorCheckpoint.load(with_learned_start)[1].spec, own, 13)  # another learned start in the same file
    for changes, key in (({"learned_start": str(own)}, "learned_start_sha256"), ({}, "learned_start")):
        with pytest.raises(UserError, match=f"other settings.*{key}") as info:
            outcome(tiny(with_learned_start, tmp_path / "out", start="learned", **changes))
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"other settings.*start: 'learned' there, None now"):
        outcome(tiny(with_learned_start, tmp_path / "out"))


def test_a_missing_or_mismatched_learned_start_is_a_one_line_error(ars_operator: pathlib.Path,
                                                                    tmp_path: pathlib.Path) -> None:
    other = a_start(PolicySpec(17, 6, hidden=(8,)), tmp_path / "other.safetensors", 0)
    for changes, message in (({}, "start=learned needs the operator's learned start, and .*start.safetensors is "
                                  "missing"),
                             ({"learned_start": str(tmp_path / "none")}, "none is missing"),
                             ({"learned_start": str(other)}, "other.safetensors has policy spec")):
        with pytest.raises(UserError, match=message) as info:
            outcome(tiny(ars_operator, tmp_path / "out", start="learned", **changes))
        assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("changes", "message"), [
    ({"start": "nope"}, "start=nope: must be one of fresh, learned"),
    ({"operator_path": "no_such_operator"}, "operator no_such_operator is missing"),
    ({"tasks": ["halfcheetah_vel/train/40"]}, "halfcheetah_vel/train/40 is not one of the operator's"),
    ({"tasks": ["halfcheetah_vel/test/0"]}, "halfcheetah_vel/test/0 is not one of the operator's"),
    ({"shaping": "nope"}, "shaping=nope: must be one of ratio, task_ranks"),
    ({"popsize": 1}, "popsize must be even and >= 2"),
    ({"popsize": 3}, "popsize must be even and >= 2"),
    ({"applications": 0}, "applications=0: must be >= 1"),
    ({"stdev_init": 0.0}, "stdev_init=0.0: must be finite and > 0"),
    ({"logger": "nope"}, "logger must be one of"),
    ({"evolve": ["update.nope"]}, "update.nope names none of the operator's weights"),
])
def test_bad_input_is_a_one_line_error(ars_operator: pathlib.Path, tmp_path: pathlib.Path,
                                       changes: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        outcome(tiny(ars_operator, tmp_path / "out", **changes))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_ppo_operator_is_refused(operator_path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with pytest.raises(UserError, match="learned from ppo"):
        outcome(tiny(operator_path, tmp_path / "out"))
