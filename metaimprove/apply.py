"""Apply a trained operator on new tasks in place of RL updates, beside the baselines, under one protocol.

For every (task, seed): start from the same fresh policy θ⁰ (an initialization seed never used in
collection), then per iteration collect one batch of the teacher's size with the current policy and

* ``operator``: θ ← f(θ, τ, ask)   (the normalizer updated with τ, as the teacher does)
* ``ppo``: the teacher's own update from the same start and seeds
* ``no_update``: the starting policy, never updated

After every iteration each method's policy is evaluated the same way (deterministic mean action,
fixed evaluation episodes and seed). Rows go to ``curves.csv``: method, task, seed, env_steps, return.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from metaimprove.envs import mujoco_log
from metaimprove.errors import UserError
from metaimprove.features import encode, next_normalizer, stack
from metaimprove.operator import ImprovementOperator, OperatorCheckpoint
from metaimprove.policy import ObsNormalizer, Policy, init_params, load_policy
from metaimprove.rollout import Collector, Simulator, evaluate
from metaimprove.tasks import Task, TaskConfig, get_family
from metaimprove.teachers import PPO, PPOConfig

METHODS = ("operator", "ppo", "no_update")
CURVE_FIELDS = ["method", "task", "seed", "env_steps", "return"]
# Fresh initializations: collection uses small seeds (0, 1, ...), so these were never seen in training.
FRESH_INIT_OFFSET = 100_000


@dataclass
class ApplyConfig:
    """Apply an operator on held-out tasks in place of RL updates, beside PPO and no update."""

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
    init: str | None = None
    """a policy file (``policy.save_policy``) every run starts from, instead of fresh initializations"""
    seeds: int = 5
    """seeds per task (each: its own fresh initialization, collection and evaluation seeds)"""
    applications: int = 20
    """iterations per method: operator applications / PPO updates"""
    methods: list[str] = field(default_factory=lambda: ["operator", "ppo", "no_update"])
    """methods to run: operator, ppo, no_update"""
    ask_k: int | None = None
    """jump size to ask for (default: the largest trained k)"""
    ask_improvement: float | None = None
    """requested improvement of mean reward per step (default: the 90% quantile reached in training for k)"""
    eval_episodes: int = 8
    """deterministic evaluation episodes per point"""
    workers: int = 0
    """parallel processes (0: one per CPU)"""


@dataclass(frozen=True)
class Job:
    """One (method, task, seed) run."""

    method: str
    task: Task
    seed: int


def start_policy(ckpt: OperatorCheckpoint, seed: int) -> Policy:
    """The fresh policy θ⁰ of run ``seed``: an initialization seed no collection uses, identity normalizer."""
    spec = ckpt.spec
    theta = init_params(spec, torch.Generator().manual_seed(FRESH_INIT_OFFSET + seed))
    return Policy(spec, theta, ObsNormalizer.identity(spec.obs_dim))


def teacher_config(ckpt: OperatorCheckpoint) -> PPOConfig:
    """The configuration of the teacher whose pairs trained ``ckpt`` (its batch size is the operator's)."""
    fields = PPOConfig.__dataclass_fields__
    given = ckpt.teacher.get("config", {})
    cfg = PPOConfig(**{k: v for k, v in given.items() if k in fields})
    cfg.value_hidden = tuple(cfg.value_hidden)
    return cfg


def operator_steps(op: ImprovementOperator, ckpt: OperatorCheckpoint, task: Task, start: Policy, seed: int,
                   applications: int, ask: torch.Tensor, timings: list[float] | None = None) -> Iterator[Policy]:
    """Yield the policy after each of ``applications`` operator steps on ``task`` from ``start``.

    Each step collects one teacher-sized batch τ with the current policy, folds τ's observations into
    the policy's normalizer (as the teacher does) and sets θ ← f(θ, τ, ask) for that normalizer.
    """
    cfg = teacher_config(ckpt)
    policy = Policy(ckpt.spec, start.theta.float().clone(), start.normalizer.copy())
    collector = Collector(task, n_envs=cfg.n_envs, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(applications):
        exp = collector.collect(policy, cfg.n_steps)
        begin = time.perf_counter()
        feats = encode(policy, exp, ckpt.features, generator)
        with torch.no_grad():
            theta = op(stack([feats]), ask.unsqueeze(0))[0]
        if timings is not None:
            timings.append(time.perf_counter() - begin)
        if not torch.isfinite(theta).all():
            raise UserError(f"the operator produced non-finite parameters on {task.name}; "
                            "the checkpoint is unusable for this task")
        policy = Policy(ckpt.spec, theta, next_normalizer(policy, exp))
        yield policy


def run_job(config: ApplyConfig, job: Job) -> tuple[list[dict[str, object]], dict[str, list[float]]]:
    """Run one (method, task, seed); returns its curve rows and step timings."""
    torch.set_num_threads(1)
    # Worker processes start without the CLI's MuJoCo warning handler; warnings belong in the run directory.
    with mujoco_log(Path(config.out)):
        return _run_job(config, job)


def _run_job(config: ApplyConfig, job: Job) -> tuple[list[dict[str, object]], dict[str, list[float]]]:
    op, ckpt = OperatorCheckpoint.load(config.operator_path)
    cfg = teacher_config(ckpt)
    batch = cfg.n_envs * cfg.n_steps
    start = load_policy(Path(config.init)) if config.init is not None else start_policy(ckpt, job.seed)
    eval_seed = 1_000_003 * job.seed + 17

    def row(i: int, policy: Policy) -> dict[str, object]:
        ret = evaluate(policy, job.task, config.eval_episodes, seed=eval_seed)
        return {"method": job.method, "task": job.task.name, "seed": job.seed, "env_steps": i * batch, "return": ret}

    rows = [row(0, start)]
    timings: dict[str, list[float]] = {}
    if job.method == "operator":
        ask = ckpt.default_ask(config.ask_k, config.ask_improvement)
        timings["operator_step"] = []
        steps = operator_steps(op, ckpt, job.task, start, job.seed, config.applications, ask,
                               timings["operator_step"])
        rows += [row(i + 1, p) for i, p in enumerate(steps)]
    elif job.method == "ppo":
        teacher = PPO(cfg)
        timings["ppo_update"] = []
        teacher.start(job.task, start, job.seed)
        for i in range(config.applications):
            exp = teacher.collect()
            begin = time.perf_counter()
            policy = teacher.improve(exp)
            timings["ppo_update"].append(time.perf_counter() - begin)
            rows.append(row(i + 1, policy))
    else:
        rows += [{**rows[0], "env_steps": (i + 1) * batch} for i in range(config.applications)]
    return rows, timings


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


def _validate(config: ApplyConfig, ckpt: OperatorCheckpoint) -> list[Task]:
    unknown = set(config.methods) - set(METHODS)
    if unknown or not config.methods:
        raise UserError(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    if config.n_tasks < 1 or config.seeds < 1 or config.applications < 1 or config.eval_episodes < 1:
        raise UserError("n_tasks, seeds, applications and eval_episodes must all be >= 1")
    if config.task_file is not None:
        tasks = [_read_task(Path(config.task_file))]
    else:
        tasks = get_family(config.task.family).tasks(config.split, config.n_tasks, start=config.task_start)
    sim = Simulator(tasks[0], n_envs=1, seed=0)
    if (sim.obs_dim, sim.act_dim) != (ckpt.spec.obs_dim, ckpt.spec.act_dim):
        raise UserError(f"operator {config.operator_path} improves policies with obs {ckpt.spec.obs_dim} / act "
                        f"{ckpt.spec.act_dim} but {tasks[0].family} has obs {sim.obs_dim} / act {sim.act_dim}")
    if config.init is not None:
        init = load_policy(Path(config.init))
        if init.spec != ckpt.spec:
            raise UserError(f"initial policy {config.init} has spec {init.spec} but the operator improves {ckpt.spec}")
    seen = set(ckpt.tasks) & {t.name for t in tasks}
    if seen:
        raise UserError(f"tasks {sorted(seen)} were used to train this operator; apply on another split or range")
    return tasks


def apply(config: ApplyConfig) -> Path:
    """Run every method on every (task, seed); writes ``curves.csv`` and ``timings.csv`` to ``config.out``."""
    _, ckpt = OperatorCheckpoint.load(config.operator_path)
    tasks = _validate(config, ckpt)
    if "operator" in config.methods:
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
    _write_csv(out / "curves.csv", CURVE_FIELDS, rows)
    timing_rows = []
    for _, timings in results:
        for name, values in timings.items():
            timing_rows += [{"name": name, "seconds": v} for v in values]
    _write_csv(out / "timings.csv", ["name", "seconds"], timing_rows)
    _print_summary(rows, timing_rows, config)
    return out / "curves.csv"


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, object]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _print_summary(rows: list[dict[str, object]], timing_rows: list[dict[str, object]], config: ApplyConfig) -> None:
    final = max(int(r["env_steps"]) for r in rows)  # type: ignore[call-overload]
    for method in config.methods:
        vals = [float(r["return"]) for r in rows if r["method"] == method and r["env_steps"] == final]  # type: ignore[arg-type]
        start = [float(r["return"]) for r in rows if r["method"] == method and r["env_steps"] == 0]  # type: ignore[arg-type]
        print(f"{method}: mean return {sum(start) / len(start):.1f} -> {sum(vals) / len(vals):.1f} "
              f"after {final} env steps")
    means = {}
    for name in ("operator_step", "ppo_update"):
        vals = [float(r["seconds"]) for r in timing_rows if r["name"] == name]  # type: ignore[arg-type]
        means[name] = sum(vals) / len(vals) if vals else math.nan
    if not math.isnan(means["operator_step"]) and not math.isnan(means["ppo_update"]):
        # Measured in whichever worker ran each job, under whatever else ran beside it: indicative only
        # (benchmarks/improvement.py times both on the same batch in one process).
        print(f"mean wall time: operator step {means['operator_step'] * 1e3:.1f} ms, "
              f"PPO update {means['ppo_update'] * 1e3:.1f} ms (across workers)")
