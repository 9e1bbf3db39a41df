"""Outcome training (``metaimprove outcome``): PGPE over the operator's weights on the returns it reaches."""

import math
import pathlib

import pytest
import torch

from metaimprove import seeds
from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.methods import teacher_steps
from metaimprove.evaluation.protocol import start_policy as apply_start
from metaimprove.loggers import read_rows
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.runtime import BatchSchedule, Explorer, operator_teacher, operator_update
from metaimprove.sim.rollout import evaluate
from metaimprove.sim.tasks import get_family
from metaimprove.storage import load_tensors
from metaimprove.training import outcome as outcome_module
from metaimprove.training.outcome import (
    ROW_FIELDS,
    OutcomeConfig,
    TaskOutcome,
    fitness,
    outcome,
    start_policy,
    task_outcome,
)
from tests.helpers import apply_config, curve_rows


def tiny(operator: pathlib.Path, out: pathlib.Path, **changes: object) -> OutcomeConfig:
    """2 generations of 2 members (and the center and the teacher), 2 applications, on 1 of 2 training tasks."""
    settings: dict[str, object] = dict(operator_path=str(operator), out=str(out), generations=2, popsize=2,
                                       applications=2, tasks_per_generation=1, eval_episodes=1,
                                       tasks=["halfcheetah_vel/train/0", "halfcheetah_vel/train/1"], stdev_init=0.05)
    settings.update(changes)
    return OutcomeConfig(**settings)  # type: ignore[arg-type]


def test_each_member_runs_as_apply_would_and_fitness_is_relative_to_the_teacher(moving_operator: pathlib.Path
                                                                                  ) -> None:
    op, ckpt = OperatorCheckpoint.load(moving_operator)
    task, seed, applications, episodes = get_family("halfcheetah_vel").task("train", 0), 5, 3, 2
    ask = ckpt.ask()
    # The operator twice in one population: both copies run side by side and must agree with a run of their own.
    result = task_outcome([op, op], ckpt, task, seed, applications, ask, episodes)

    schedule = BatchSchedule.of(ckpt)
    start = apply_start(ckpt, seed)
    assert torch.equal(start.theta, start_policy(ckpt, seed).theta)
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

    def toy(ops, ckpt, task, seed, applications, ask, episodes):  # type: ignore[no-untyped-def]
        distance = [float((torch.nn.utils.parameters_to_vector(o.parameters()).detach() - target).norm()) for o in ops]
        return TaskOutcome(task.name, seed, 0.0, -1.0, tuple(-d - 1.0 for d in distance), 1)

    monkeypatch.setattr(outcome_module, "task_outcome", toy)
    outcome(tiny(ars_operator, tmp_path, generations=30, popsize=64, stdev_init=0.01, center_lr=0.05))
    rows = read_rows(tmp_path / "metrics.csv")
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


@pytest.mark.parametrize(("changes", "message"), [
    ({"operator_path": "no_such_operator"}, "operator no_such_operator is missing"),
    ({"tasks": ["halfcheetah_vel/train/40"]}, "halfcheetah_vel/train/40 is not one of the operator's"),
    ({"tasks": ["halfcheetah_vel/test/0"]}, "halfcheetah_vel/test/0 is not one of the operator's"),
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
