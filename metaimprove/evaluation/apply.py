"""The ``apply`` stage: every method of :data:`~metaimprove.evaluation.methods.METHODS` on held-out tasks (or a
user's env) under one env-step budget, from the same start θ⁰, evaluated the same way; writes ``curves.csv``
(method, task, seed, env_steps, return, fallbacks, guard_steps) and ``timings.csv``, and each run as it finishes
under ``runs/``, so that a rerun of the same command into the same ``out`` redoes only the runs left.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing as mp
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from metaimprove import seeds
from metaimprove.errors import UserError
from metaimprove.evaluation.baselines import training_runs
from metaimprove.evaluation.guard import Point
from metaimprove.evaluation.methods import METHODS, Run, method_names
from metaimprove.evaluation.protocol import STARTS, ApplyConfig, Job, learned_start_path, run_budget
from metaimprove.interop.sb3 import load_any_policy
from metaimprove.loggers import Metrics, check_logger, progress, run_log
from metaimprove.operator.checkpoint import OperatorCheckpoint, resolve_operator, warn_if_incomplete
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.sim.envs import AnyTask, UserEnv, mujoco_log
from metaimprove.sim.policy import Policy, save_policy
from metaimprove.sim.rollout import GymSimulator, Simulator, evaluate_many, set_threads, worker_threads
from metaimprove.sim.tasks import Task, get_family
from metaimprove.storage import (
    atomic_write_bytes,
    atomic_write_csv,
    exclusive,
    meta_path,
    plain_json,
    sha256_file,
)

CURVE_FIELDS = ["method", "task", "seed", "env_steps", "return", "fallbacks", "guard_steps"]
POLICY_NEEDS = {"dr_policy": "dr", "meta_policy": "metalearn"}
"""the policy files a method may need (``Method.needs``), by ApplyConfig field, and the stage that writes each"""
RUNS_DIR = "runs"
"""folder of ``out`` holding each finished run, ``<method>/<task>-s<seed>.json``"""
RUN_FORMAT = "metaimprove-apply-run"
# Settings that choose which runs there are, where they execute and what is reported, never what one run gives.
RUN_INDEPENDENT = ("out", "workers", "threads", "logger", "methods", "n_tasks", "task_start", "seeds", "seed_start")
FILE_SETTINGS = ("operator_path", "task_file", "init", "dr_policy", "meta_policy", "learned_start")
"""settings naming files whose contents a run depends on: a finished run is reused only if they are unchanged"""

Result = tuple[list[dict[str, Any]], dict[str, list[float]]]
"""one run's curve rows and step timings"""

log = logging.getLogger(__name__)


def run_job(config: ApplyConfig, job: Job) -> Result:
    """Run one (method, task, seed); returns its curve rows and step timings."""
    torch.set_num_threads(1)
    set_threads(config.threads or 1)
    # Worker processes start without the CLI's MuJoCo warning handler; warnings belong in the run directory.
    with mujoco_log(Path(config.out)):
        return _run_job(config, job)


def _run_job(config: ApplyConfig, job: Job) -> Result:
    op, ckpt = OperatorCheckpoint.load(config.operator_path)
    ckpt = ckpt.on(job.task)  # a shape-agnostic operator serves the task's observation and action sizes
    schedule = BatchSchedule.of(ckpt, config.warmup)
    run = Run(config, op, ckpt, job.task, job.seed, schedule, run_budget(config, schedule.batch))
    method = METHODS[job.method]

    def rows(points: list[Point]) -> list[dict[str, object]]:
        returns = evaluate_many([p.policy for p in points], job.task, config.eval_episodes,
                                seed=seeds.evaluation(job.seed))
        return [{"method": job.method, "task": job.task.name, "seed": job.seed, "env_steps": point.steps,
                 "return": ret, "fallbacks": point.fallbacks, "guard_steps": point.guard_steps}
                for point, ret in zip(points, returns, strict=True)]

    if method.policy is not None:
        fixed, charged = method.policy(run)
        [first] = rows([Point(charged, fixed)])
        # A fixed policy's return is the same wherever it is read: one evaluation, drawn flat to the budget.
        flat = [{**first, "env_steps": i * schedule.batch}
                for i in range(charged // schedule.batch + 1, run.budget // schedule.batch + 1)]
        _save_final(config, job, fixed)
        return [first, *flat], run.timings
    assert method.points is not None
    start = method.start(run)
    # Every point's return in one batched evaluation after the run (its points' policies stay as they were deployed).
    points = [start, *method.points(run, start)]
    _save_final(config, job, points[-1].policy)
    return rows(points), run.timings


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


def learned_start_users(config: ApplyConfig) -> list[str]:
    """The methods that start from the operator's learned start, and ``start=learned`` where it is asked for."""
    users = [m for m in config.methods if "learned_start" in METHODS[m].needs]
    return users + (["start=learned"] if config.start == "learned" else [])


def _validate(config: ApplyConfig, ckpt: OperatorCheckpoint) -> Sequence[AnyTask]:
    valid = method_names()
    unknown = [m for m in config.methods if m not in valid]
    if unknown or not config.methods:
        raise UserError(f"unknown methods {unknown}; choose from {valid}")
    if config.n_tasks < 1 or config.seeds < 1 or config.applications < 1 or config.eval_episodes < 1:
        raise UserError("n_tasks, seeds, applications and eval_episodes must all be >= 1")
    if config.workers < 0 or config.threads < 0:
        raise UserError(f"workers and threads must be >= 0 (0: from the cores), got {config.workers} and "
                        f"{config.threads}")
    if config.seed_start < 0:
        raise UserError(f"seed_start must be >= 0 (seeds are non-negative), got {config.seed_start}")
    check_logger(config.logger)
    if min(config.nearest_k, config.transfer_episodes, config.guard_episodes) < 1:
        raise UserError("nearest_k, transfer_episodes and guard_episodes must be >= 1")
    if min(config.noise_scale, config.guard_threshold, config.guard_margin) < 0:
        raise UserError("noise_scale, guard_threshold and guard_margin must be >= 0")
    if config.start not in STARTS:
        raise UserError(f"start must be one of {list(STARTS)}, got '{config.start}'")
    if config.init is not None and config.start != "fresh":
        raise UserError(f"init= and start={config.start} both choose θ⁰; give one of them")
    BatchSchedule.of(ckpt, config.warmup)  # a bad warm-up is a one-line error here, not in a worker
    if config.env is not None:
        return [_validate_env(config, ckpt, config.env)]
    if config.episode_length is not None:
        raise UserError("episode_length= sets the episodes of env=; a task family sets its own")
    if config.task_file is not None:
        tasks = [_read_task(Path(config.task_file))]
    else:
        tasks = get_family(config.task.family).tasks(config.split, config.n_tasks, start=config.task_start)
    family = tasks[0].family
    ckpt = ckpt.on(tasks[0])
    _check_starts(config, ckpt, family)
    sim = Simulator(tasks[0], n_envs=1, seed=0)
    if (sim.obs_dim, sim.act_dim) != (ckpt.spec.obs_dim, ckpt.spec.act_dim):
        raise UserError(f"operator {config.operator_path} improves policies with obs {ckpt.spec.obs_dim} / act "
                        f"{ckpt.spec.act_dim} but {family} has obs {sim.obs_dim} / act {sim.act_dim}")
    needs_data = [m for m in config.methods if "dataset" in METHODS[m].needs]
    needs_data += ["start=train_init"] if config.start == "train_init" else []
    if needs_data and config.dataset is None:
        raise UserError(f"{', '.join(needs_data)} need(s) dataset=<dir>, the operator's training runs; collect them "
                        f"with `metaimprove collect task={family} out=<dir>` and the operator's collection settings "
                        f"(results/operators/{family}.collect.yaml for the shipped operator)")
    if needs_data:
        runs = training_runs(str(config.dataset))
        ckpt.check_policy(runs[0].final.spec, f"dataset {config.dataset}", family)
        if runs[0].task.family != family:
            raise UserError(f"dataset {config.dataset} holds {runs[0].task.family} runs, not {family}")
    for need, stage in POLICY_NEEDS.items():
        needing = [m for m in config.methods if need in METHODS[m].needs]
        path = getattr(config, need)
        if needing and path is None:
            raise UserError(f"{', '.join(needing)} need(s) {need}=<file>; train it with `metaimprove {stage} "
                            f"task={family} out=<dir>` (writes <dir>/policy.safetensors)")
        if needing:
            ckpt.check_policy(load_any_policy(Path(str(path))).spec, f"{need} {path}", family)
    seen = set(ckpt.tasks) & {t.name for t in tasks}
    if seen:
        raise UserError(f"tasks {sorted(seen)} were used to train this operator; apply on another split or range")
    _check_budget(config, ckpt, family)
    return tasks


def _validate_env(config: ApplyConfig, ckpt: OperatorCheckpoint, name: str) -> UserEnv:
    """The user's env of ``env=``, checked against the operator and the other settings."""
    if config.task_file is not None:
        raise UserError("env= and task_file= both say what to apply on; give one of them")
    ours = [m for m in config.methods if not METHODS[m].on_user_env]
    ours += ["start=train_init"] if config.start == "train_init" else []
    if ours:
        on_env = [m for m, method in METHODS.items() if method.on_user_env]
        raise UserError(f"{', '.join(ours)} need(s) a task family's training runs; with env= run "
                        f"{', '.join(on_env)} from start=fresh or init=<policy>")
    env = UserEnv.resolve(name, config.episode_length)
    sim = GymSimulator(env, n_envs=1, seed=0)
    ckpt = ckpt.on(env)
    _check_starts(config, ckpt, name)
    if (sim.obs_dim, sim.act_dim) != (ckpt.spec.obs_dim, ckpt.spec.act_dim):
        raise UserError(f"env {name} has obs ({sim.obs_dim},) / act ({sim.act_dim},) but operator "
                        f"{config.operator_path} improves obs {ckpt.spec.obs_dim} / act {ckpt.spec.act_dim}")
    _check_budget(config, ckpt, name)
    return env


def _check_starts(config: ApplyConfig, ckpt: OperatorCheckpoint, where: str) -> None:
    """The start policies the settings name (``init=``, the learned start) must suit the operator on ``where``."""
    if config.init is not None:
        ckpt.check_policy(load_any_policy(Path(config.init)).spec, f"initial policy {config.init}", where)
    if learned_start_users(config):
        path = learned_start_path(config)
        if not path.is_file():
            raise UserError(f"{', '.join(learned_start_users(config))} need(s) the operator's learned start, and "
                            f"{path} is missing; make one with `metaimprove metalearn inner=operator operator_path="
                            f"{config.operator_path} out=<dir>` and give learned_start=<dir>/policy.safetensors")
        ckpt.check_policy(load_any_policy(path).spec, f"learned start {path}", where)


def _check_budget(config: ApplyConfig, ckpt: OperatorCheckpoint, family: str) -> None:
    """Every method must afford at least one step of its own within the budget B."""
    budget = run_budget(config, BatchSchedule.of(ckpt).batch)
    for name in config.methods:
        check = METHODS[name].check_budget
        if check is not None:
            check(config, ckpt, budget, family)


def apply(config: ApplyConfig) -> Path:
    """Run every method on every (task, seed); writes ``curves.csv`` and ``timings.csv`` to ``config.out``.

    Each run is written to ``runs/`` as it finishes; rerunning into the same ``out`` reuses the finished runs whose
    settings and input files are unchanged and runs the rest. One process at a time writes an ``out``."""
    _, ckpt = OperatorCheckpoint.load(config.operator_path)
    tasks = _validate(config, ckpt)
    if learned_start_users(config):
        # Named, so that a finished run is reused only while the file beside the operator is the same one.
        config = dataclasses.replace(config, learned_start=str(learned_start_path(config)))
    if any(METHODS[m].uses_operator for m in config.methods):
        ckpt.check_task(tasks[0])  # an oracle operator reads only its family's tasks (all of them share one)
        ckpt.ask(config.ask_k)  # warn once, up front, for a k outside the trained ones
    seed_range = range(config.seed_start, config.seed_start + config.seeds)
    jobs = [Job(m, t, s) for t in tasks for s in seed_range for m in config.methods]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out, "apply"), run_log(out, "apply"), \
            Metrics(out, config.logger, "apply", plain_json(dataclasses.asdict(config))) as metrics:
        warn_if_incomplete(resolve_operator(config.operator_path))
        runs = _FinishedRuns(out, config)
        results = [runs.load(job) for job in jobs]
        todo = [i for i, result in enumerate(results) if result is None]
        if len(todo) < len(jobs):
            log.info(f"{len(jobs) - len(todo)} of {len(jobs)} runs were already done in {out / RUNS_DIR}")
        with progress(total=len(jobs), initial=len(jobs) - len(todo), desc="apply", unit="run") as bar:
            for i, result in _execute(config, jobs, todo):
                runs.save(jobs[i], result)
                results[i] = result
                _report(jobs[i], result[0], metrics)
                bar.update()
        finished = [result for result in results if result is not None]
        rows = [row for run_rows, _ in finished for row in run_rows]
        atomic_write_csv(out / "curves.csv", CURVE_FIELDS, rows)
        timing_rows = []
        for _, timings in finished:
            for name, values in timings.items():
                timing_rows += [{"name": name, "seconds": v} for v in values]
        atomic_write_csv(out / "timings.csv", ["name", "seconds"], timing_rows)
        _print_summary(rows, timing_rows, config)
    return out / "curves.csv"


def _execute(config: ApplyConfig, jobs: list[Job], todo: list[int]) -> Iterator[tuple[int, Result]]:
    """Run the jobs numbered ``todo`` in this process or on a pool of ``config.workers``; yield each number with its
    result as it finishes."""
    workers = min(config.workers or os.cpu_count() or 1, len(todo))
    config = dataclasses.replace(config, threads=worker_threads(config.threads, workers))
    if workers <= 1:
        for i in todo:
            yield i, run_job(config, jobs[i])
        return
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(run_job, config, jobs[i]): i for i in todo}
        for future in as_completed(futures):
            yield futures[future], future.result()


def _report(job: Job, rows: list[dict[str, Any]], metrics: Metrics) -> None:
    """Log a finished run's returns: a line, and its curve to the metrics logger."""
    log.info(f"{job.method} on {job.task.name}, seed {job.seed}: return {float(rows[0]['return']):.1f} -> "
             f"{float(rows[-1]['return']):.1f} after {rows[-1]['env_steps']} env steps")
    for row in rows:
        metrics.log(f"{job.method}/{job.task.name}/s{job.seed}", row, int(row["env_steps"]))


class _FinishedRuns:
    """The runs of ``out/runs/``: one JSON file per finished run, with what it depends on, reused by a rerun only
    when that is unchanged (the settings that shape one run and the contents of its input files, not where those
    files lie: a copy of the operator elsewhere, or the same file by name, is served the same runs)."""

    def __init__(self, out: Path, config: ApplyConfig) -> None:
        self.root = out / RUNS_DIR
        settings = {k: v for k, v in dataclasses.asdict(config).items()
                    if k not in RUN_INDEPENDENT and k not in FILE_SETTINGS}
        for name in FILE_SETTINGS:
            path = getattr(config, name)
            if path is not None:
                settings[f"{name}_sha256"] = _digest(resolve_operator(path) if name == "operator_path" else Path(path))
        if config.dataset is not None:
            settings["dataset_sha256"] = _digest(Path(config.dataset) / "manifest.json")
        self.settings = plain_json(settings)

    def path(self, job: Job) -> Path:
        """The file of ``job``."""
        return self.root / job.method / f"{job.task.name.replace('/', '-')}-s{job.seed}.json"

    def identity(self, job: Job) -> dict[str, Any]:
        """What ``job``'s result depends on."""
        task = job.task.to_dict() if isinstance(job.task, Task) else job.task.name
        return {"format": RUN_FORMAT, "settings": self.settings, "method": job.method, "task": task, "seed": job.seed}

    def load(self, job: Job) -> Result | None:
        """The result of ``job`` if a finished run with the same identity is on disk, else None."""
        path = self.path(job)
        if not path.exists():
            return None
        try:
            saved = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(saved, dict) or saved.get("identity") != self.identity(job):
            return None
        return saved["rows"], saved["timings"]

    def save(self, job: Job, result: Result) -> None:
        """Write ``job``'s result (atomically; floats exactly, NaN included, timings in their order)."""
        path = self.path(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows, timings = result
        atomic_write_bytes(path, json.dumps({"identity": self.identity(job), "rows": rows,
                                             "timings": timings}).encode())


def _digest(path: Path) -> str:
    """sha256 of a file and of the JSON beside it if it is a tensor file (its metadata); empty for no file."""
    files = [path, *([meta_path(path)] if path.suffix == ".safetensors" else [])]
    return "".join(sha256_file(f) for f in files if f.is_file())


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
        log.info(line)
    means = {}
    for name in ("operator_step", "ppo_update"):
        vals = [float(r["seconds"]) for r in timing_rows if r["name"] == name]  # type: ignore[arg-type]
        means[name] = sum(vals) / len(vals) if vals else math.nan
    if not math.isnan(means["operator_step"]) and not math.isnan(means["ppo_update"]):
        # Measured in whichever worker ran each job, under whatever else ran beside it: indicative only
        # (research/improvement_v1.py times both on the same batch in one process).
        log.info(f"mean wall time: operator step {means['operator_step'] * 1e3:.1f} ms, "
                 f"PPO update {means['ppo_update'] * 1e3:.1f} ms (across workers)")
