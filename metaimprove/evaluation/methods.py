"""The methods ``apply`` runs, one :class:`Method` each in :data:`METHODS`: what a method needs and how it runs.

Adding a method is adding one entry to :data:`METHODS`; validation, the CLI's choices and the plots' colors follow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from metaimprove import seeds
from metaimprove.errors import UserError
from metaimprove.evaluation import baselines, sac
from metaimprove.evaluation.baselines import TrainingRun, batch_return, training_runs
from metaimprove.evaluation.guard import Guard, Point, guarded_steps
from metaimprove.evaluation.protocol import ApplyConfig, initial_policy, learned_start_path
from metaimprove.interop.sb3 import load_any_policy
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.networks import ImprovementOperator
from metaimprove.operator.runtime import BatchSchedule, Explorer, operator_teacher, operator_update
from metaimprove.sim.envs import AnyTask
from metaimprove.sim.policy import Policy
from metaimprove.sim.rollout import episode_length, evaluate
from metaimprove.sim.tasks import get_family
from metaimprove.teachers import TEACHERS, Teacher, make_teacher, teacher_option


@dataclass(frozen=True)
class Run:
    """One (method, task, seed) run as a method sees it: the settings, the operator, the batch schedule and B."""

    config: ApplyConfig
    operator: ImprovementOperator
    ckpt: OperatorCheckpoint
    task: AnyTask
    seed: int
    schedule: BatchSchedule
    budget: int
    timings: dict[str, list[float]] = field(default_factory=dict)
    """step timings by name (``operator_step``, ``<teacher>_update``), filled as the run goes"""

    def start(self) -> Policy:
        """The run's θ⁰ (:func:`~metaimprove.evaluation.protocol.initial_policy`)."""
        return initial_policy(self.config, self.ckpt, self.seed)

    def timer(self, name: str) -> list[float]:
        """The list the run's ``name`` timings go to."""
        return self.timings.setdefault(name, [])

    def training_runs(self) -> tuple[TrainingRun, ...]:
        """The operator's training runs (``dataset=``)."""
        return training_runs(str(self.config.dataset))

    def learned_start(self) -> Point:
        """The operator's learned start (:func:`~metaimprove.evaluation.protocol.learned_start_path`), free: its
        meta-training is not charged, as the operator's dataset is not."""
        return Point(0, load_any_policy(learned_start_path(self.config)))

    def policy_file(self, field: str) -> Policy:
        """The pretrained policy the ApplyConfig field ``field`` names (``dr_policy``, ``meta_policy``)."""
        return load_any_policy(Path(str(getattr(self.config, field))))


@dataclass(frozen=True)
class Method:
    """One method of ``apply``: adapting (``points``) or fixed (``policy``), exactly one of the two."""

    name: str
    color: str | None
    """its color in every plot (None: a color hashed from the name)"""
    points: Callable[[Run, Point], Iterator[Point]] | None = None
    """an adapting method's run from its start: the points it deploys after each of its steps (``apply`` evaluates
    them after the run, so a point's policy must not change once it is yielded)"""
    policy: Callable[[Run], tuple[Policy, int]] | None = None
    """a fixed method's policy and the env steps charged for choosing it"""
    start: Callable[[Run], Point] = lambda run: Point(0, run.start())
    """where an adapting method starts, and the env steps that start cost (default: the run's θ⁰, free)"""
    uses_operator: bool = False
    """whether it applies the operator (which must then suit the tasks and the ask)"""
    needs: tuple[str, ...] = ()
    """the ApplyConfig fields it cannot run without (``dataset``, or a policy file of ``apply.POLICY_NEEDS``;
    ``learned_start``, whose default is the file beside the operator)"""
    on_user_env: bool = False
    """whether it runs on a user's env (``env=``), where there are no training tasks"""
    improves_start: bool = False
    """whether it improves (or keeps) the run's θ⁰, so that ``start`` matters to it"""
    check_budget: Callable[[ApplyConfig, OperatorCheckpoint, int, str], None] | None = None
    """raises a one-line error when the budget B cannot pay for one of its steps (config, checkpoint, B, family)"""

    def __post_init__(self) -> None:
        if (self.points is None) == (self.policy is None):
            raise ValueError(f"method {self.name}: give exactly one of points (adapting) and policy (fixed)")


def teacher_steps(teacher: Teacher, task: AnyTask, start: Policy, seed: int, budget: int,
                  timings: list[float], schedule: BatchSchedule | None = None, steps: int = 0) -> Iterator[Point]:
    """A teacher's updates from ``start`` on ``task`` while its next batch fits in ``budget``, counting env steps
    from ``steps`` (what reaching ``start`` cost).

    With ``schedule`` (``teacher`` of its full width) its batches are as wide as the schedule says: at each change
    of width a teacher of that width restarts from the current policy, seeded by :meth:`BatchSchedule.seed` (ARS
    keeps nothing else between steps; PPO's value net and optimizer would start afresh)."""
    policy, n_envs = start, None
    while True:
        wanted = teacher.batch_shape[0] if schedule is None else schedule.envs_at(steps)
        if wanted != n_envs:
            current = teacher if wanted == teacher.batch_shape[0] else teacher.resized(wanted)
            current.start(task, policy, seed if schedule is None else schedule.seed(seed, wanted))
            n_envs = wanted
        if steps + current.steps_per_update > budget:
            return
        exp = current.collect()
        steps += exp.n_steps
        begin = time.perf_counter()
        policy = current.improve(exp)
        timings.append(time.perf_counter() - begin)
        yield Point(steps, policy)


def _operator(guarded: bool) -> Callable[[Run], Iterator[Point]]:
    """The operator's run: θ ← f(θ, τ, ask) per batch it explores; ``guarded``: protected by a :class:`Guard`."""

    def points(run: Run, start: Point) -> Iterator[Point]:
        config, ckpt, task = run.config, run.ckpt, run.task
        explore = Explorer(ckpt, task, start.policy, run.seed, run.schedule)
        ask = ckpt.ask(config.ask_k)
        update = operator_update(run.operator, ckpt, task, ask, torch.Generator().manual_seed(run.seed),
                                 run.timer("operator_step"))
        length = episode_length(task)

        def fallback(best: Policy, remaining: int, n: int) -> tuple[Policy, int]:
            teacher = make_teacher(ckpt.teacher)
            if teacher.steps_per_update > remaining:
                return best, 0  # no budget left for a teacher step: the rollback alone
            last = list(teacher_steps(teacher, task, best, seeds.fallback(run.seed, n), teacher.steps_per_update,
                                      run.timer("fallback_teacher_update")))[-1]
            return last.policy, last.steps

        guard = None
        if guarded:
            guard = Guard(config.guard_threshold,
                          lambda p: evaluate(p, task, config.guard_episodes, seed=seeds.verification(run.seed)),
                          config.guard_episodes * length, config.guard_margin)
        return guarded_steps(start.policy, explore, update, fallback, lambda exp: batch_return(exp, length), guard,
                             run.schedule.batch_at, run.budget)

    return points


TeacherOf = Callable[[OperatorCheckpoint], Teacher]
"""how a method builds its teacher from the operator's checkpoint"""


def _registered(name: str) -> TeacherOf:
    """Teacher ``name`` of :data:`TEACHERS`: the operator's own settings when it learned from it, else its defaults."""
    return lambda ckpt: make_teacher(ckpt.teacher, name)


def _teacher_fits(name: str, teacher: TeacherOf | None = None) -> Callable[[ApplyConfig, OperatorCheckpoint, int, str],
                                                                          None]:
    """A budget check: B must pay for one batch of teacher ``name`` (built by ``teacher``, default the registered
    one)."""
    build = teacher or _registered(name)

    def check(config: ApplyConfig, ckpt: OperatorCheckpoint, budget: int, family: str) -> None:
        steps = build(ckpt).steps_per_update
        if steps > budget:
            raise UserError(f"budget B = {budget} env steps is smaller than one batch of {name} ({steps} steps)")

    return check


def _teacher(name: str, teacher: TeacherOf | None = None) -> Method:
    """Teacher ``name``'s own updates from the run's θ⁰ (built by ``teacher``, default the registered one)."""
    build = teacher or _registered(name)

    def points(run: Run, start: Point) -> Iterator[Point]:
        return teacher_steps(build(run.ckpt), run.task, start.policy, run.seed, run.budget,
                             run.timer(f"{name}_update"))

    return Method(name, TEACHER_COLORS.get(name), points=points, on_user_env=True, improves_start=True,
                  check_budget=_teacher_fits(name, build))


def _teacher_op_batch(run: Run, start: Point) -> Iterator[Point]:
    """The operator's teacher on the operator's batch schedule: does the schedule alone explain its speed?"""
    return teacher_steps(operator_teacher(run.ckpt), run.task, start.policy, run.seed, run.budget,
                         run.timer("teacher_op_batch_update"), run.schedule)


def _dr_ppo(run: Run, start: Point) -> Iterator[Point]:
    """PPO fine-tuning the domain-randomized policy."""
    return teacher_steps(make_teacher(run.ckpt.teacher, "ppo"), run.task, start.policy, run.seed, run.budget,
                         run.timer("ppo_update"))


def _nearest(run: Run) -> tuple[Policy, int]:
    return baselines.nearest_runs(run.training_runs(), run.task)[0].final, 0


def _nearest_noise(run: Run) -> tuple[Policy, int]:
    nearest = baselines.nearest_runs(run.training_runs(), run.task)[0].final
    return baselines.add_noise(nearest, run.config.noise_scale, torch.Generator().manual_seed(run.seed)), 0


def _nearest_avg(run: Run) -> tuple[Policy, int]:
    nearest = baselines.nearest_runs(run.training_runs(), run.task, run.config.nearest_k)
    return baselines.average_policies([r.final for r in nearest]), 0


def _transferred(run: Run) -> tuple[Policy, int]:
    return baselines.transferred(run.training_runs(), run.task, run.config.transfer_episodes,
                                 seeds.selection(run.seed))


def _pretrained(field: str) -> Callable[[Run], tuple[Policy, int]]:
    """The policy of the ApplyConfig field ``field`` as a fixed method: the DR policy or the meta-learned start (their
    pretraining is not charged, as the operator's dataset is not)."""
    return lambda run: (run.policy_file(field), 0)


_dr, _meta = _pretrained("dr_policy"), _pretrained("meta_policy")


def _transfer_fits(config: ApplyConfig, ckpt: OperatorCheckpoint, budget: int, family: str) -> None:
    """``transferred``'s selection episodes must fit in the budget."""
    charged = len(training_runs(str(config.dataset))) * config.transfer_episodes * get_family(family).episode_length
    if charged > budget:
        raise UserError(f"transferred's selection costs {charged} env steps, more than the budget B = {budget}; "
                        "raise applications/budget or lower transfer_episodes")


def _fine_tuned(fixed: Callable[[Run], tuple[Policy, int]]) -> Callable[[Run, Point], Iterator[Point]]:
    """ARS (the operator's own ARS when it learned from one, else ARS's defaults) fine-tuning a fixed policy for the
    rest of the budget: what a user holding that policy would do."""

    def points(run: Run, start: Point) -> Iterator[Point]:
        return teacher_steps(make_teacher(run.ckpt.teacher, "ars"), run.task, start.policy, run.seed, run.budget,
                             run.timer("ars_update"), steps=start.steps)

    return points


def _fixed_start(fixed: Callable[[Run], tuple[Policy, int]]) -> Callable[[Run], Point]:
    """A fixed method's policy as a start, at the env steps choosing it cost."""
    return lambda run: Point(*reversed(fixed(run)))


def _transfer_then_ars_fits(config: ApplyConfig, ckpt: OperatorCheckpoint, budget: int, family: str) -> None:
    _transfer_fits(config, ckpt, budget, family)
    _teacher_fits("ars")(config, ckpt, budget, family)


TEACHER_COLORS = {"ppo": "#1f77b4", "ppo_tuned": "#aec7e8", "ars": "#ff7f0e"}
"""blue for the PPO teacher (light: tuned on validation), orange for ARS; a teacher without one gets a hashed color"""

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("operator", "#d62728", points=_operator(guarded=False), uses_operator=True, on_user_env=True,
           improves_start=True),
    Method("operator_guarded", "#ff9896", points=_operator(guarded=True), uses_operator=True, on_user_env=True,
           improves_start=True),
    Method("operator_learned_start", "#e7969c", points=_operator(guarded=False), start=Run.learned_start,
           uses_operator=True, on_user_env=True, needs=("learned_start",)),
    *(_teacher(name) for name in TEACHERS),
    _teacher("ppo_tuned", lambda ckpt: teacher_option("ppo_tuned")),
    Method("teacher_op_batch", "#fdae6b", points=_teacher_op_batch, on_user_env=True, improves_start=True),
    Method("no_update", "#7f7f7f", policy=lambda run: (run.start(), 0), on_user_env=True, improves_start=True),
    Method("nearest", "#8c564b", policy=_nearest, needs=("dataset",)),
    Method("nearest_noise", "#e377c2", policy=_nearest_noise, needs=("dataset",)),
    Method("nearest_avg", "#bcbd22", policy=_nearest_avg, needs=("dataset",)),
    Method("avg_weights", "#17becf", policy=lambda run: (baselines.shared_init_average(run.training_runs()), 0),
           needs=("dataset",)),
    Method("transferred", "#2ca02c", policy=_transferred, needs=("dataset",), check_budget=_transfer_fits),
    Method("dr", "#9467bd", policy=_dr, needs=("dr_policy",)),
    Method("dr_ppo", "#5254a3", points=_dr_ppo, start=_fixed_start(_dr), needs=("dr_policy",),
           check_budget=_teacher_fits("ppo")),
    Method("nearest_ars", "#c49c94", points=_fine_tuned(_nearest), start=_fixed_start(_nearest), needs=("dataset",),
           check_budget=_teacher_fits("ars")),
    Method("transferred_ars", "#98df8a", points=_fine_tuned(_transferred), start=_fixed_start(_transferred),
           needs=("dataset",), check_budget=_transfer_then_ars_fits),
    Method("dr_ars", "#c5b0d5", points=_fine_tuned(_dr), start=_fixed_start(_dr), needs=("dr_policy",),
           check_budget=_teacher_fits("ars")),
    Method("meta", "#637939", policy=_meta, needs=("meta_policy",)),
    Method("meta_ars", "#b5cf6b", points=_fine_tuned(_meta), start=_fixed_start(_meta), needs=("meta_policy",),
           check_budget=_teacher_fits("ars")),
    Method("sac", "#8c6d31", points=lambda run, start: sac.sac_points(run.task, run.seed, run.schedule.batch,
                                                                      run.budget, run.timer("sac_batch")),
           start=lambda run: Point(0, sac.untrained(run.task, run.seed, run.budget)), on_user_env=True,
           check_budget=sac.check_budget),
)}
"""every method ``apply`` runs, by name, in table order"""


def method_names() -> list[str]:
    """Every method ``apply`` runs, in table order (teachers as registered in :data:`TEACHERS`)."""
    return list(METHODS)


def starts_from_theta0(method: str) -> bool:
    """Whether ``method`` improves (or keeps) the run's starting policy, so that ``start`` matters to it."""
    return METHODS[method].improves_start
