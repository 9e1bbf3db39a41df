"""Apply a trained operator on new tasks in place of RL updates, beside the baselines, under one protocol.

For every (task, seed) every method gets the same env-step budget B (``applications`` batches of the
operator's teacher, or ``budget``) and is evaluated the same way (deterministic mean action, fixed
evaluation episodes and seed) after each of its updates. Methods that improve a starting policy start
from the same θ⁰: a fresh initialization never used in collection (``start=fresh``) or the one the
training runs used (``start=train_init``).

* ``operator``: per batch τ collected with θ: θ ← f(θ, τ, ask)   (the normalizer updated with τ, as the teacher does)
* ``operator_guarded``: the operator, except that when the batch a new operator policy collects returns more
  than ``guard_threshold`` below the best batch so far, it rolls back to that best policy and takes a teacher
  step instead (every fallback is counted in the ``fallbacks`` column); and it deploys a policy only after
  verifying it: ``guard_episodes`` deterministic episodes (the evaluation's kind of episode, on seeds of their
  own) must beat the deployed policy's by ``guard_margin``. Verification is charged to the run's env steps
  (``guard_steps`` column)
* each teacher of :data:`~metaimprove.teachers.TEACHERS` (``ppo``, ...): its own updates from the same start
* ``teacher_op_batch``: the operator's own teacher collecting batches as wide as the operator's (an operator
  trained with ``features.envs`` reads fewer envs than its teacher ran; with a warm-up, as wide as the operator's
  at every point): does the operator's batch schedule alone explain its speed per env step?
* ``no_update``: the starting policy, never updated
* ``nearest``, ``nearest_noise``, ``nearest_avg``, ``avg_weights``, ``transferred``: zero-adaptation
  policies built from the training runs (``dataset=``; see :mod:`metaimprove.evaluation.baselines`)
* ``dr``: the domain-randomized policy (``dr_policy=``) as-is; ``dr_ppo``: PPO fine-tuning it

With ``env=<gymnasium id or module:Class>`` the runs are on a user's own env instead of the family's tasks
(:class:`~metaimprove.sim.envs.UserEnv`; the methods that need training tasks are refused there).

The operator collects its batches as its teacher explores, ``features.envs`` wide; with a warm-up
(``features.warmup`` recorded in the checkpoint, or ``warmup=``) narrower ones first: ``[[16, 8192]]`` collects
16-env batches until the run has used 8192 env steps (:class:`BatchSchedule`). Small batches give noisy steps
but many of them, which is what a fresh policy far from any optimum needs; wide ones give the precise steps that
matter later.

Rows go to ``curves.csv``: method, task, seed, env_steps, return, fallbacks, guard_steps (a curve is flat where
a method does not update; ``transferred`` starts at the env steps its selection used).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from metaimprove.errors import UserError
from metaimprove.evaluation import baselines
from metaimprove.evaluation.baselines import batch_return, training_runs
from metaimprove.evaluation.guard import Guard, Point, guarded_steps
from metaimprove.interop.sb3 import load_any_policy
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.runtime import (
    BatchSchedule,
    Explorer,
    batch_schedule,
    explorer_teacher,
    operator_batch,
    operator_update,
)
from metaimprove.sim.envs import AnyTask, UserEnv, mujoco_log
from metaimprove.sim.policy import ObsNormalizer, Policy, init_params, save_policy
from metaimprove.sim.rollout import GymSimulator, Simulator, episode_length, evaluate
from metaimprove.sim.tasks import Task, TaskConfig, get_family
from metaimprove.storage import atomic_write_csv
from metaimprove.teachers import TEACHERS, Teacher, make_teacher

OPERATOR_METHODS = ("operator", "operator_guarded")
TEACHER_OP_BATCH = "teacher_op_batch"
CHECKPOINT_METHODS = ("nearest", "nearest_noise", "nearest_avg", "avg_weights", "transferred")
DR_METHODS = ("dr", "dr_ppo")
# What runs on a user's env: the methods that need no training tasks of a family.
ENV_METHODS = (*OPERATOR_METHODS, *TEACHERS, TEACHER_OP_BATCH, "no_update")
CURVE_FIELDS = ["method", "task", "seed", "env_steps", "return", "fallbacks", "guard_steps"]
STARTS = ("fresh", "train_init")
# Fresh initializations: collection uses small seeds (0, 1, ...), so these were never seen in training.
FRESH_INIT_OFFSET = 100_000


def method_names() -> list[str]:
    """Every method ``apply`` runs, in table order (teachers as registered in :data:`TEACHERS`)."""
    return [*OPERATOR_METHODS, *TEACHERS, TEACHER_OP_BATCH, "no_update", *CHECKPOINT_METHODS, *DR_METHODS]


def starts_from_theta0(method: str) -> bool:
    """Whether ``method`` improves (or keeps) the run's starting policy, so that ``start`` matters to it."""
    return method in OPERATOR_METHODS or method in TEACHERS or method in (TEACHER_OP_BATCH, "no_update")


@dataclass
class ApplyConfig:
    """Apply an operator on held-out tasks in place of RL updates, beside the baselines (equal env-step budgets)."""

    operator_path: str = "???"
    """operator checkpoint (.safetensors) written by `metaimprove train`"""
    out: str = "???"
    """run directory for curves.csv and timings.csv"""
    task: TaskConfig = field(default_factory=lambda: TaskConfig("halfcheetah_vel"))
    """task family to apply on (config group: task=<family>)"""
    split: str = "test"
    """split of the family: test (interpolation) or ood (extrapolation)"""
    n_tasks: int = 4
    """number of tasks of the split"""
    task_start: int = 0
    """index of the first task"""
    task_file: str | None = None
    """a JSON file holding one task (``Task.to_json()``, explicit parameters and physics) to apply on instead"""
    env: str | None = None
    """a gymnasium id (Hopper-v5) or module:Class whose spaces fit the operator's policies, run instead of task"""
    episode_length: int | None = None
    """env=: steps per episode (default: the env id's max_episode_steps)"""
    init: str | None = None
    """a policy file (``policy.save_policy``) every run starts from, instead of start=fresh|train_init"""
    start: str = "fresh"
    """θ⁰ of run s: fresh (an initialization no training run used) or train_init (a training run's θ⁰; needs dataset)"""
    seeds: int = 5
    """seeds per task (each: its own initialization, collection and evaluation seeds)"""
    applications: int = 20
    """budget B in batches of the operator's teacher: operator applications / PPO updates per run"""
    budget: int | None = None
    """budget B in env steps per run instead of applications (at least one batch)"""
    methods: list[str] = field(default_factory=lambda: ["operator", "ppo", "no_update"])
    """methods: operator, operator_guarded, a teacher (ppo, ...), teacher_op_batch, no_update, nearest,
    nearest_noise, nearest_avg, avg_weights, transferred, dr, dr_ppo"""
    dataset: str | None = None
    """the operator's training dataset (`metaimprove collect` out=): for the checkpoint baselines and train_init"""
    dr_policy: str | None = None
    """the domain-randomized policy (`metaimprove dr` out=/policy.safetensors): needed by dr and dr_ppo"""
    guard_threshold: float = 10.0
    """operator_guarded: roll back when a new operator policy's batch returns this much below the best batch"""
    guard_episodes: int = 2
    """operator_guarded: deterministic episodes that verify a policy before it is deployed (charged to the run)"""
    guard_margin: float = 5.0
    """operator_guarded: a verified policy is deployed only when it beats the deployed one's return by this much"""
    nearest_k: int = 4
    """nearest_avg: number of nearest training runs averaged"""
    noise_scale: float = 0.1
    """nearest_noise: noise std as a fraction of each weight block's RMS"""
    transfer_episodes: int = 1
    """transferred: selection episodes per training run (their env steps are charged to it)"""
    save_policies: bool = False
    """also write every run's final policy to <out>/policies/<method>/"""
    ask_k: int | None = None
    """jump size to ask for (default: the checkpoint's ask_k, chosen when it was trained; else the k nearest 2)"""
    ask_improvement: float | None = None
    """requested improvement of mean reward per step (default: the 90% quantile reached in training for k)"""
    warmup: list[list[int]] | None = None
    """the operator's narrower first batches, [[envs, until_env_step], ...] (as features.warmup); None: the
    checkpoint's"""
    eval_episodes: int = 8
    """deterministic evaluation episodes per point"""
    workers: int = 0
    """parallel processes (0: one per CPU)"""


@dataclass(frozen=True)
class Job:
    """One (method, task, seed) run."""

    method: str
    task: AnyTask
    seed: int


def start_policy(ckpt: OperatorCheckpoint, seed: int) -> Policy:
    """The fresh policy θ⁰ of run ``seed``: an initialization seed no collection uses, identity normalizer."""
    spec = ckpt.spec
    theta = init_params(spec, torch.Generator().manual_seed(FRESH_INIT_OFFSET + seed))
    return Policy(spec, theta, ObsNormalizer.identity(spec.obs_dim))


def initial_policy(config: ApplyConfig, ckpt: OperatorCheckpoint, seed: int) -> Policy:
    """θ⁰ of run ``seed``: the ``init`` file, a training run's θ⁰ (``start=train_init``), or a fresh one.

    ``train_init`` cycles through the training runs' distinct seeds (collection gives runs of one seed one θ⁰).
    """
    if config.init is not None:
        return load_any_policy(Path(config.init))
    if config.start == "train_init":
        assert config.dataset is not None  # checked by _validate
        runs = training_runs(config.dataset)
        seeds = sorted({run.seed for run in runs})
        first = next(run for run in runs if run.seed == seeds[seed % len(seeds)]).first
        return Policy(first.spec, first.theta.clone(), first.normalizer.copy())
    return start_policy(ckpt, seed)


def run_budget(config: ApplyConfig, batch: int) -> int:
    """The env-step budget B of every run: ``budget``, or ``applications`` operator batches."""
    if config.budget is None:
        return config.applications * batch
    if config.budget < batch:
        raise UserError(f"budget={config.budget} env steps is smaller than one batch of the operator's teacher "
                        f"({batch} steps); give budget >= {batch}")
    return config.budget


def eval_seed(seed: int) -> int:
    """Seed of run ``seed``'s evaluation episodes (shared by every method)."""
    return 1_000_003 * seed + 17


def selection_seed(seed: int) -> int:
    """Seed of run ``seed``'s ``transferred`` selection episodes (never the evaluation's)."""
    return 1_000_003 * seed + 29


def verify_seed(seed: int) -> int:
    """Seed of run ``seed``'s ``operator_guarded`` verification episodes (never the evaluation's)."""
    return 1_000_003 * seed + 41


def teacher_steps(teacher: Teacher, task: AnyTask, start: Policy, seed: int, budget: int,
                  timings: list[float], schedule: BatchSchedule | None = None) -> Iterator[Point]:
    """A teacher's updates from ``start`` on ``task`` while its next batch fits in ``budget``.

    With ``schedule`` (``teacher`` of its full width) its batches are as wide as the schedule says: at each change
    of width a teacher of that width restarts from the current policy, seeded by :meth:`BatchSchedule.seed` (ARS
    keeps nothing else between steps; PPO's value net and optimizer would start afresh)."""
    steps, policy, envs = 0, start, None
    while True:
        wanted = teacher.batch_shape[0] if schedule is None else schedule.envs_at(steps)
        if wanted != envs:
            current = teacher if wanted == teacher.batch_shape[0] else teacher.resized(wanted)
            current.start(task, policy, seed if schedule is None else schedule.seed(seed, wanted))
            envs = wanted
        if steps + current.steps_per_update > budget:
            return
        exp = current.collect()
        steps += exp.n_steps
        begin = time.perf_counter()
        policy = current.improve(exp)
        timings.append(time.perf_counter() - begin)
        yield Point(steps, policy)


def zero_adaptation_policy(config: ApplyConfig, ckpt: OperatorCheckpoint, job: Job) -> tuple[Policy, int]:
    """The fixed policy of a method that does not adapt, and the env steps charged for choosing it."""
    if job.method == "no_update":
        return initial_policy(config, ckpt, job.seed), 0
    if job.method == "dr":
        return load_any_policy(Path(str(config.dr_policy))), 0
    runs = training_runs(str(config.dataset))
    if job.method == "nearest":
        return baselines.nearest_runs(runs, job.task)[0].final, 0
    if job.method == "nearest_noise":
        nearest = baselines.nearest_runs(runs, job.task)[0].final
        return baselines.add_noise(nearest, config.noise_scale, torch.Generator().manual_seed(job.seed)), 0
    if job.method == "nearest_avg":
        nearest_k = baselines.nearest_runs(runs, job.task, config.nearest_k)
        return baselines.average_policies([r.final for r in nearest_k]), 0
    if job.method == "avg_weights":
        return baselines.shared_init_average(runs), 0
    if job.method == "transferred":
        return baselines.transferred(runs, job.task, config.transfer_episodes, selection_seed(job.seed))
    raise ValueError(f"{job.method} is not a zero-adaptation method")


def run_job(config: ApplyConfig, job: Job) -> tuple[list[dict[str, object]], dict[str, list[float]]]:
    """Run one (method, task, seed); returns its curve rows and step timings."""
    torch.set_num_threads(1)
    # Worker processes start without the CLI's MuJoCo warning handler; warnings belong in the run directory.
    with mujoco_log(Path(config.out)):
        return _run_job(config, job)


def _run_job(config: ApplyConfig, job: Job) -> tuple[list[dict[str, object]], dict[str, list[float]]]:
    op, ckpt = OperatorCheckpoint.load(config.operator_path)
    schedule = batch_schedule(ckpt, config.warmup)
    batch = schedule.envs * schedule.n_steps
    budget = run_budget(config, batch)

    def row(point: Point) -> dict[str, object]:
        ret = evaluate(point.policy, job.task, config.eval_episodes, seed=eval_seed(job.seed))
        return {"method": job.method, "task": job.task.name, "seed": job.seed, "env_steps": point.steps,
                "return": ret, "fallbacks": point.fallbacks, "guard_steps": point.guard_steps}

    timings: dict[str, list[float]] = {}
    points: Iterator[Point]
    if job.method in OPERATOR_METHODS:
        start = initial_policy(config, ckpt, job.seed)
        explore = Explorer(ckpt, job.task, start, job.seed, schedule)
        ask = ckpt.default_ask(config.ask_k, config.ask_improvement)
        update = operator_update(op, ckpt, job.task, ask, torch.Generator().manual_seed(job.seed),
                                 timings.setdefault("operator_step", []))
        length = episode_length(job.task)

        def fallback(best: Policy, remaining: int, n: int) -> tuple[Policy, int]:
            teacher = make_teacher(ckpt.teacher)
            if teacher.steps_per_update > remaining:
                return best, 0  # no budget left for a teacher step: the rollback alone
            last = list(teacher_steps(teacher, job.task, best, eval_seed(job.seed) + 1 + n, teacher.steps_per_update,
                                      timings.setdefault("fallback_teacher_update", [])))[-1]
            return last.policy, last.steps

        guard = None
        if job.method == "operator_guarded":
            guard = Guard(config.guard_threshold,
                          lambda p: evaluate(p, job.task, config.guard_episodes, seed=verify_seed(job.seed)),
                          config.guard_episodes * length, config.guard_margin)
        points = guarded_steps(start, explore, update, fallback,
                               lambda exp: batch_return(exp, length), guard, schedule.batch_at, budget)
    elif job.method in TEACHERS or job.method in ("dr_ppo", TEACHER_OP_BATCH):
        name = "ppo" if job.method == "dr_ppo" else job.method
        start = load_any_policy(Path(str(config.dr_policy))) if job.method == "dr_ppo" else initial_policy(config, ckpt,
                                                                                                      job.seed)
        op_batch = job.method == TEACHER_OP_BATCH
        teacher = explorer_teacher(ckpt) if op_batch else make_teacher(ckpt.teacher, name)
        points = teacher_steps(teacher, job.task, start, job.seed, budget, timings.setdefault(f"{name}_update", []),
                               schedule if op_batch else None)
    else:
        start, charged = zero_adaptation_policy(config, ckpt, job)
        first = row(Point(charged, start))
        # A fixed policy's return is the same wherever it is read: one evaluation, drawn flat to the budget.
        rows = [first] + [{**first, "env_steps": i * batch} for i in range(charged // batch + 1, budget // batch + 1)]
        _save_final(config, job, start)
        return rows, timings
    last = Point(0, start)
    rows = [row(last)]
    for last in points:
        rows.append(row(last))
    _save_final(config, job, last.policy)
    return rows, timings


def _save_final(config: ApplyConfig, job: Job, policy: Policy) -> None:
    if config.save_policies:
        folder = Path(config.out) / "policies" / job.method
        folder.mkdir(parents=True, exist_ok=True)
        save_policy(folder / f"{job.task.name.replace('/', '-')}-s{job.seed}.safetensors", policy)


def _read_task(path: Path) -> Task:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read task file {path}: {exc.strerror}") from exc
    try:
        task = Task.from_json(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"task file {path} is not JSON ({exc.msg}); write it with Task.to_json()") from exc
    get_family(task.family)  # an unknown family is a one-line error here, not a crash later
    return task


def _validate(config: ApplyConfig, ckpt: OperatorCheckpoint) -> Sequence[AnyTask]:
    valid = method_names()
    unknown = [m for m in config.methods if m not in valid]
    if unknown or not config.methods:
        raise UserError(f"unknown methods {unknown}; choose from {valid}")
    if config.n_tasks < 1 or config.seeds < 1 or config.applications < 1 or config.eval_episodes < 1:
        raise UserError("n_tasks, seeds, applications and eval_episodes must all be >= 1")
    if min(config.nearest_k, config.transfer_episodes, config.guard_episodes) < 1:
        raise UserError("nearest_k, transfer_episodes and guard_episodes must be >= 1")
    if min(config.noise_scale, config.guard_threshold, config.guard_margin) < 0:
        raise UserError("noise_scale, guard_threshold and guard_margin must be >= 0")
    if config.start not in STARTS:
        raise UserError(f"start must be one of {list(STARTS)}, got '{config.start}'")
    if config.init is not None and config.start != "fresh":
        raise UserError(f"init= and start={config.start} both choose θ⁰; give one of them")
    batch_schedule(ckpt, config.warmup)  # a bad warm-up is a one-line error here, not in a worker
    if config.init is not None:
        _check_spec(load_any_policy(Path(config.init)), ckpt, f"initial policy {config.init}")
    if config.env is not None:
        return [_validate_env(config, ckpt, config.env)]
    if config.episode_length is not None:
        raise UserError("episode_length= sets the episodes of env=; a task family sets its own")
    if config.task_file is not None:
        tasks = [_read_task(Path(config.task_file))]
    else:
        tasks = get_family(config.task.family).tasks(config.split, config.n_tasks, start=config.task_start)
    family = tasks[0].family
    sim = Simulator(tasks[0], n_envs=1, seed=0)
    if (sim.obs_dim, sim.act_dim) != (ckpt.spec.obs_dim, ckpt.spec.act_dim):
        raise UserError(f"operator {config.operator_path} improves policies with obs {ckpt.spec.obs_dim} / act "
                        f"{ckpt.spec.act_dim} but {family} has obs {sim.obs_dim} / act {sim.act_dim}")
    needs_data = [m for m in config.methods if m in CHECKPOINT_METHODS]
    needs_data += ["start=train_init"] if config.start == "train_init" else []
    if needs_data and config.dataset is None:
        raise UserError(f"{', '.join(needs_data)} need(s) dataset=<dir>, the operator's training runs; collect them "
                        f"with `metaimprove collect task={family} out=<dir>` and the operator's collection settings "
                        f"(results/operators/{family}.collect.yaml for the shipped operator)")
    if needs_data:
        runs = training_runs(str(config.dataset))
        _check_spec(runs[0].final, ckpt, f"dataset {config.dataset}")
        if runs[0].task.family != family:
            raise UserError(f"dataset {config.dataset} holds {runs[0].task.family} runs, not {family}")
    needs_dr = [m for m in config.methods if m in DR_METHODS]
    if needs_dr and config.dr_policy is None:
        raise UserError(f"{', '.join(needs_dr)} need(s) dr_policy=<file>; train it with `metaimprove dr "
                        f"task={family} out=<dir>` (writes <dir>/policy.safetensors)")
    if needs_dr:
        _check_spec(load_any_policy(Path(str(config.dr_policy))), ckpt, f"dr_policy {config.dr_policy}")
    seen = set(ckpt.tasks) & {t.name for t in tasks}
    if seen:
        raise UserError(f"tasks {sorted(seen)} were used to train this operator; apply on another split or range")
    _check_budget(config, ckpt, family)
    return tasks


def _validate_env(config: ApplyConfig, ckpt: OperatorCheckpoint, name: str) -> UserEnv:
    """The user's env of ``env=``, checked against the operator and the other settings."""
    if config.task_file is not None:
        raise UserError("env= and task_file= both say what to apply on; give one of them")
    ours = [m for m in config.methods if m not in ENV_METHODS]
    ours += ["start=train_init"] if config.start == "train_init" else []
    if ours:
        raise UserError(f"{', '.join(ours)} need(s) a task family's training runs; with env= run "
                        f"{', '.join(ENV_METHODS)} from start=fresh or init=<policy>")
    env = UserEnv.resolve(name, config.episode_length)
    sim = GymSimulator(env, n_envs=1, seed=0)
    if (sim.obs_dim, sim.act_dim) != (ckpt.spec.obs_dim, ckpt.spec.act_dim):
        raise UserError(f"env {name} has obs ({sim.obs_dim},) / act ({sim.act_dim},) but operator "
                        f"{config.operator_path} improves obs {ckpt.spec.obs_dim} / act {ckpt.spec.act_dim}")
    _check_budget(config, ckpt, name)
    return env


def _check_spec(policy: Policy, ckpt: OperatorCheckpoint, what: str) -> None:
    if policy.spec != ckpt.spec:
        raise UserError(f"{what} has policy spec {policy.spec} but the operator improves {ckpt.spec}")


def _check_budget(config: ApplyConfig, ckpt: OperatorCheckpoint, family: str) -> None:
    """Every method must afford at least one step of its own within the budget B."""
    n_envs, n_steps = operator_batch(ckpt)
    budget = run_budget(config, n_envs * n_steps)
    teachers = {m for m in config.methods if m in TEACHERS} | ({"ppo"} if "dr_ppo" in config.methods else set())
    for name in sorted(teachers):
        steps = make_teacher(ckpt.teacher, name).steps_per_update
        if steps > budget:
            raise UserError(f"budget B = {budget} env steps is smaller than one batch of {name} ({steps} steps)")
    if "transferred" in config.methods:
        charged = (len(training_runs(str(config.dataset))) * config.transfer_episodes
                   * get_family(family).episode_length)
        if charged > budget:
            raise UserError(f"transferred's selection costs {charged} env steps, more than the budget B = {budget}; "
                            "raise applications/budget or lower transfer_episodes")


def apply(config: ApplyConfig) -> Path:
    """Run every method on every (task, seed); writes ``curves.csv`` and ``timings.csv`` to ``config.out``."""
    _, ckpt = OperatorCheckpoint.load(config.operator_path)
    tasks = _validate(config, ckpt)
    if any(m in OPERATOR_METHODS for m in config.methods):
        ckpt.check_task(tasks[0])  # an oracle operator reads only its family's tasks (all of them share one)
        ckpt.default_ask(config.ask_k, config.ask_improvement)  # warn once, up front, if outside the trained range
    jobs = [Job(m, t, s) for t in tasks for s in range(config.seeds) for m in config.methods]
    workers = min(config.workers or os.cpu_count() or 1, len(jobs))
    Path(config.out).mkdir(parents=True, exist_ok=True)
    results = []
    with tqdm(total=len(jobs), desc="apply", unit="run", dynamic_ncols=True) as bar:
        if workers == 1:
            for job in jobs:
                results.append(run_job(config, job))
                bar.update()
        else:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                for result in pool.map(run_job, [config] * len(jobs), jobs):
                    results.append(result)
                    bar.update()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for rows, _ in results for r in rows]
    atomic_write_csv(out / "curves.csv", CURVE_FIELDS, rows)
    timing_rows = []
    for _, timings in results:
        for name, values in timings.items():
            timing_rows += [{"name": name, "seconds": v} for v in values]
    atomic_write_csv(out / "timings.csv", ["name", "seconds"], timing_rows)
    _print_summary(rows, timing_rows, config)
    return out / "curves.csv"


def _print_summary(rows: list[dict[str, object]], timing_rows: list[dict[str, object]], config: ApplyConfig) -> None:
    for method in config.methods:
        # Rows are in run order, each run's from its first point to its last (guarded runs end where
        # their verifications left them, below the budget).
        runs: dict[tuple[object, object], list[dict[str, object]]] = {}
        for r in rows:
            if r["method"] == method:
                runs.setdefault((r["task"], r["seed"]), []).append(r)
        start = [float(rs[0]["return"]) for rs in runs.values()]  # type: ignore[arg-type]
        final = [float(rs[-1]["return"]) for rs in runs.values()]  # type: ignore[arg-type]
        last = max(int(rs[-1]["env_steps"]) for rs in runs.values())  # type: ignore[call-overload]
        line = (f"{method}: mean return {sum(start) / len(start):.1f} -> {sum(final) / len(final):.1f} "
                f"after at most {last} env steps")
        if method == "operator_guarded":
            fallbacks = sum(int(rs[-1]["fallbacks"]) for rs in runs.values())  # type: ignore[call-overload]
            below = sum(f < s for s, f in zip(start, final, strict=True))
            line += f" ({fallbacks} fallbacks to teacher steps, {below} of {len(final)} runs ending below their start)"
        print(line)
    means = {}
    for name in ("operator_step", "ppo_update"):
        vals = [float(r["seconds"]) for r in timing_rows if r["name"] == name]  # type: ignore[arg-type]
        means[name] = sum(vals) / len(vals) if vals else math.nan
    if not math.isnan(means["operator_step"]) and not math.isnan(means["ppo_update"]):
        # Measured in whichever worker ran each job, under whatever else ran beside it: indicative only
        # (benchmarks/improvement.py times both on the same batch in one process).
        print(f"mean wall time: operator step {means['operator_step'] * 1e3:.1f} ms, "
              f"PPO update {means['ppo_update'] * 1e3:.1f} ms (across workers)")
