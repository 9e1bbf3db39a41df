"""The ``collect`` and ``verify`` stages: a teacher run on every (task, seed) of a plan, each written as one verified
shard of a resumable dataset, on a process pool or on Ray.

Why: see the design notes (docs/design.md, "Checkpoints and shards without pickle" and "Collection: resumable,
and independent of the executor").
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import re
import signal
import socket
import typing
from collections.abc import Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.queues import Queue
from pathlib import Path
from queue import Empty
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import MISSING

from metaimprove import __version__
from metaimprove.errors import UserError
from metaimprove.loggers import CsvTable, Metrics, check_logger, progress, read_rows, run_log
from metaimprove.sim.envs import mujoco_log
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import Simulator, set_threads, worker_threads
from metaimprove.sim.tasks import SPLITS, Task, TaskConfig, get_family
from metaimprove.storage import (
    TEMP_SUFFIX,
    atomic_write_bytes,
    atomic_write_json,
    differences,
    exclusive,
    load_tensors,
    meta_path,
    plain_json,
    read_json,
    save_tensors,
)
from metaimprove.teachers import ImprovementRecord, Teacher, teacher_class

FORMAT = "metaimprove-dataset"
FORMAT_VERSION = 1
CONFIG_FILE = "config.yaml"
MANIFEST = "manifest.json"
TEACHER_LOG = "teacher.csv"
"""every update of every finished run: its env steps, batch return and the teacher's diagnostics"""
SHARD_DIR = "shards"
# What a CLI run may leave in a directory before the collection config exists there.
RUN_LEFTOVERS = {".hydra", "MUJOCO_LOG.TXT"}
ENTRY_KEYS = ("shard", "task_name", "task", "teacher", "seed", "iterations", "sha256")
EXECUTORS = ("local", "ray")
# Settings that decide where and how fast runs execute, never what they produce: not part of config.yaml.
EXECUTION_SETTINGS = ("out", "workers", "threads", "executor", "ray", "logger")
# A Ray task whose worker process dies (a node lost, OOM-killed) is rerun this many times; its shard
# path is fixed by the run and written atomically, so a rerun replaces, never duplicates, its files.
RAY_MAX_RETRIES = 3

log = logging.getLogger(__name__)


@dataclass
class RayConfig:
    """Where ``executor=ray`` runs."""

    address: str | None = None
    """null starts a Ray instance on this machine, 'auto' joins the running cluster, or host:port"""


@dataclass
class CollectConfig:
    """Run a teacher on tasks × seeds and write one verified dataset shard per run (resumable)."""

    task: TaskConfig = MISSING
    """the task family (config group: task=<family>)"""
    teacher: Any = MISSING
    """the teacher and its hyperparameters (config group: teacher=<name>, fields teacher.<field>=...)"""
    split: str = "train"
    """which split of the family to draw tasks from: train, test or ood"""
    start: int = 0
    """index of the first task in the split"""
    n_tasks: int = 16
    """number of tasks: indices start .. start + n_tasks - 1"""
    seeds: int = 3
    """runs per task, with seeds seed_start .. seed_start + seeds - 1 (a seed fixes θ⁰ and the teacher's noise)"""
    seed_start: int = 0
    """first seed"""
    iterations: int = 50
    """teacher updates per run: a shard holds θ⁰ .. θᴺ and τ⁰ .. τᴺ⁻¹ for N = iterations"""
    hidden: list[int] = field(default_factory=lambda: [32, 32])
    """hidden layer sizes of the policy MLP"""
    workers: int = 0
    """parallel worker processes; 0 = one per CPU (results do not depend on it; executor=local only)"""
    threads: int = 0
    """threads each worker steps its envs on; 0 = the cores left to each worker (results do not depend on it;
    executor=local only, a Ray task runs on the one CPU it asks for)"""
    executor: str = "local"
    """where runs execute: 'local' (a process pool) or 'ray' (one Ray task per run; pip install metaimprove[ray])"""
    ray: RayConfig = field(default_factory=RayConfig)
    """executor=ray: the cluster (ray.address=auto|host:port; unset: a Ray instance on this machine)"""
    out: str = MISSING
    """dataset directory, also the run directory (default runs/collect/<date>_<time>); rerun to resume"""
    logger: str = "csv"
    """where the teachers' diagnostics go besides teacher.csv: csv (nowhere more), tensorboard or wandb"""

    def __post_init__(self) -> None:
        checks = [
            (self.split in SPLITS, f"split must be one of {list(SPLITS)}, got '{self.split}'"),
            (self.start >= 0, f"start must be >= 0, got {self.start}"),
            (self.n_tasks >= 1, f"n_tasks must be >= 1, got {self.n_tasks}"),
            (self.seeds >= 1, f"seeds (runs per task) must be >= 1, got {self.seeds}"),
            (self.seed_start >= 0, f"seed_start must be >= 0 (seeds are non-negative), got {self.seed_start}"),
            (self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}"),
            (len(self.hidden) >= 1 and min(self.hidden) >= 1, f"hidden sizes must be >= 1, got {list(self.hidden)}"),
            (self.workers >= 0, f"workers must be >= 0 (0 = one per CPU), got {self.workers}"),
            (self.threads >= 0, f"threads must be >= 0 (0 = the cores left to each worker), got {self.threads}"),
            (self.executor in EXECUTORS, f"executor must be one of {list(EXECUTORS)}, got '{self.executor}'"),
            (self.ray.address is None or self.executor == "ray",
             f"ray.address={self.ray.address} needs executor=ray"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        check_logger(self.logger)


@dataclass
class VerifyConfig:
    """Check every shard of a collected dataset against its manifest (reads only)."""

    dataset: str = MISSING
    """dataset directory: the out= of a collect run"""



@dataclass(frozen=True)
class Run:
    """One planned run: a task (family, split, index) and a seed."""

    family: str
    split: str
    index: int
    seed: int

    @property
    def shard(self) -> str:
        """Path of its shard relative to the dataset directory."""
        return f"{SHARD_DIR}/{self.family}-{self.split}-{self.index:04d}-s{self.seed}.safetensors"


_Finished = tuple[dict[str, Any], list[dict[str, Any]]]
"""a finished run: its manifest entry and its rows of ``teacher.csv``"""


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs for one run (pickled to it)."""

    run: Run
    root: str
    teacher_cls: type[Teacher]
    teacher_config: Any
    iterations: int
    hidden: tuple[int, ...]


def plan(cfg: CollectConfig) -> list[Run]:
    """The runs of a collection, in manifest order (task index, then seed)."""
    return [Run(cfg.task.family, cfg.split, index, seed)
            for index in range(cfg.start, cfg.start + cfg.n_tasks)
            for seed in range(cfg.seed_start, cfg.seed_start + cfg.seeds)]


def collect(cfg: CollectConfig) -> None:
    """The ``collect`` stage: run ``cfg.teacher`` on every planned run and write the dataset to ``cfg.out``.

    The plan is every task ``start .. start + n_tasks - 1`` of a family's split crossed with seeds
    ``seed_start .. seed_start + seeds - 1``. A run starts from θ⁰ = ``init_params(spec, seed)`` with an identity
    normalizer (runs sharing a seed share θ⁰) and records ``iterations`` teacher updates. Runs execute on a pool of
    spawned worker processes (``executor=local``) or as one Ray task per run (``executor=ray``; every node must see
    ``out`` at the same path); both write the same bytes. Rerunning into the same directory with the same config
    resumes: listed shards are verified and kept, anything else in ``shards/`` is removed and redone.
    """
    family = get_family(cfg.task.family)
    if cfg.split not in family.split_seeds:
        raise UserError(f"family {family.name} has no split '{cfg.split}'; choose one of {sorted(family.split_seeds)}")
    teacher_cls = teacher_class(cfg.teacher)
    teacher_config = _as_declared(cfg.teacher)
    # Built once here so that a bad teacher config is refused before anything is written.
    steps_per_update = teacher_cls(teacher_config).steps_per_update
    settings = plain_json({k: v for k, v in dataclasses.asdict(cfg).items() if k not in EXECUTION_SETTINGS}
                          | {"teacher": dataclasses.asdict(teacher_config), "teacher_name": teacher_cls.name})
    root = Path(cfg.out).absolute()
    runs = plan(cfg)
    if root.exists():
        _check_config(root, settings)
    # Ray is started (or joined) before anything is written, so that a missing Ray or cluster leaves nothing.
    session = _ray_session(cfg.ray.address) if cfg.executor == "ray" else contextlib.nullcontext()
    with session:
        root.mkdir(parents=True, exist_ok=True)
        with exclusive(root, "collect"):
            _check_config(root, settings)
            if not (root / CONFIG_FILE).exists():
                atomic_write_bytes(root / CONFIG_FILE, yaml.safe_dump(settings, sort_keys=False).encode())
            done = {entry["shard"]: entry for entry in _resume(root, runs)}
            todo = [run for run in runs if run.shard not in done]
            jobs = [_Job(run, str(root), teacher_cls, teacher_config, cfg.iterations, tuple(cfg.hidden))
                    for run in todo]
            with run_log(root, "collect"), Metrics(root, cfg.logger, "collect", settings) as metrics:
                if jobs:
                    log.info(f"collect: {len(jobs)} of {len(runs)} runs to do in {root}")
                    bar = _Progress(steps_per_update * cfg.iterations, len(runs) - len(todo), len(runs))
                    if cfg.executor == "ray":
                        finished = _execute_ray(jobs, bar)
                    else:
                        workers = min(cfg.workers or os.cpu_count() or 1, len(jobs))
                        finished = _execute(jobs, workers, worker_threads(cfg.threads, workers), bar)
                    teacher_log = _TeacherLog(root, set(done))
                    with contextlib.closing(finished):
                        for entry, updates in finished:
                            # The diagnostics before the manifest: a run the manifest lists has all its rows.
                            teacher_log.append(updates)
                            done[entry["shard"]] = entry
                            _write_manifest(root, [done[run.shard] for run in runs if run.shard in done])
                            for row in updates:
                                metrics.log(f"{entry['task_name']}/s{entry['seed']}", row, int(row["env_steps"]))
                skipped = f" ({len(runs) - len(todo)} were already done)" if len(todo) < len(runs) else ""
                log.info(f"collected {len(todo)} runs{skipped}: {len(runs)} shards in {root}")


class _TeacherLog:
    """``teacher.csv`` of a dataset: one row per update of every finished run, appended as runs finish. Rows of runs
    the manifest does not list (an interrupted collection's) are dropped when it resumes."""

    def __init__(self, root: Path, done: set[str]) -> None:
        self.path = root / TEACHER_LOG
        kept = [row for row in read_rows(self.path) if row.get("shard") in done]
        self.table: CsvTable | None = None
        if kept:
            self.table = CsvTable(self.path, list(kept[0]))
            self.table.reset(kept)
        else:
            self.path.unlink(missing_ok=True)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Add one finished run's rows."""
        if self.table is None:
            self.table = CsvTable(self.path, list(rows[0]))
            self.table.reset()
        self.table.append(rows)


class _Progress:
    """The progress bar of a collection: env steps done, and finished runs out of all planned."""

    def __init__(self, steps_per_run: int, already: int, total: int) -> None:
        self.steps_per_run, self.finished, self.total = steps_per_run, already, total
        self.bar = progress(total=steps_per_run * (total - already), unit="step", unit_scale=True,
                            desc=f"collect: {already}/{total} runs")

    def run_done(self, steps: int = 0) -> None:
        """Count one finished run (and ``steps`` of it that were not reported while it ran)."""
        self.finished += 1
        self.bar.update(steps)
        self.bar.set_description(f"collect: {self.finished}/{self.total} runs")


def _execute(jobs: list[_Job], workers: int, threads: int, progress: _Progress) -> Generator[_Finished, None, None]:
    """Run ``jobs`` on a pool of ``workers`` processes, each stepping its envs on ``threads`` threads; yield each
    finished run's manifest entry and updates as it completes."""
    context = get_context("spawn")
    steps: Queue[int] = context.Queue()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(steps, threads))
    try:
        pending: set[Future[_Finished]] = {pool.submit(_collect_run, job) for job in jobs}
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            progress.bar.update(_drain(steps))
            for future in done:
                finished = future.result()
                progress.run_done()
                yield finished
        pool.shutdown()
    finally:
        progress.bar.close()
        # On an error or an interrupt, stop the runs still going now rather than after they finish:
        # finished shards are in the manifest and the rest is redone on resume.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _unreachable(address: str | None, reason: object) -> UserError:
    return UserError(f"cannot reach a Ray cluster at ray.address={address} ({str(reason).splitlines()[0]}); "
                     "start one with `ray start --head` or leave ray.address unset for a local one")


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A one-line UserError now when ``host:port`` accepts no connection: Ray itself keeps retrying for minutes."""
    if address is None or address == "auto" or ":" not in address:
        return
    host, port = address.removeprefix("ray://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise _unreachable(address, exc) from None


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[None]:
    """Use the Ray instance this process already initialized, else join ``address`` (None: start a local one,
    shut down on exit); a one-line UserError if Ray is missing or the cluster cannot be reached."""
    try:
        import ray
    except ImportError:
        raise UserError("executor=ray needs Ray, which is not installed: pip install metaimprove[ray]") from None
    if ray.is_initialized():
        yield
        return
    _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        raise _unreachable(address, exc) from exc
    try:
        yield
    finally:
        ray.shutdown()


def _execute_ray(jobs: list[_Job], progress: _Progress) -> Generator[_Finished, None, None]:
    """Run ``jobs`` as Ray tasks, one per run; yield each finished run's manifest entry and updates as it completes.

    On a cluster every node must see the dataset directory at the same path (a shared file system).
    """
    import ray

    remote = ray.remote(num_cpus=1, max_retries=RAY_MAX_RETRIES)(_collect_run_ray)
    pending = [remote.remote(job) for job in jobs]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                finished = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                # Ray wraps a worker's exception with its traceback; bad input stays one line.
                if isinstance(exc.cause, UserError):
                    raise exc.cause from None
                raise
            progress.run_done(progress.steps_per_run)
            yield finished
    finally:
        progress.bar.close()
        # As with the pool: runs still going are stopped now; finished shards are in the manifest.
        for ref in pending:
            ray.cancel(ref, force=True)


def _collect_run_ray(job: _Job) -> _Finished:
    """Ray task: one run in a Ray worker process, single-threaded like a pool worker."""
    torch.set_num_threads(1)
    return _collect_run(job)


def _drain(progress: Queue[int]) -> int:
    steps = 0
    with contextlib.suppress(Empty):
        while True:
            steps += progress.get_nowait()
    return steps


_progress: Queue[int] | None = None


def _init_worker(progress: Queue[int], threads: int) -> None:
    global _progress
    _progress = progress
    # Ctrl-C reaches the whole process group; the parent decides what happens to the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One torch thread per worker: the pool provides the parallelism, and results must not depend on it. The
    # physics may take the cores the pool leaves over: its results are the same at any thread count.
    torch.set_num_threads(1)
    set_threads(threads)


def _collect_run(job: _Job) -> _Finished:
    """Worker: one teacher run, written as a shard; returns its manifest entry and one row per update (its env
    steps, batch return and the teacher's diagnostics) for ``teacher.csv``."""
    run, root = job.run, Path(job.root)
    # Anything in the teacher drawing from global RNGs then depends on this run only, not on the
    # runs this worker happened to do before.
    random.seed(run.seed)
    np.random.seed(run.seed)
    torch.manual_seed(run.seed)
    with mujoco_log(root):
        task = get_family(run.family).task(run.split, run.index)
        # The policy's sizes are the collector's observation and action sizes.
        sim = Simulator(task, n_envs=1, seed=run.seed)
        spec = PolicySpec(sim.obs_dim, sim.act_dim, hidden=job.hidden)
        policy = Policy(spec, init_params(spec, torch.Generator().manual_seed(run.seed)),
                        ObsNormalizer.identity(spec.obs_dim))
        teacher = job.teacher_cls(job.teacher_config)
        records: list[ImprovementRecord] = []
        for record in teacher.run(task, policy, job.iterations, run.seed):
            _check_chain(records, record)
            records.append(record)
            if _progress is not None:
                _progress.put(record.experience.n_steps)
    if len(records) != job.iterations:
        raise RuntimeError(f"teacher {teacher.name} yielded {len(records)} updates, not {job.iterations}")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "task": task.to_dict(),
        "teacher": {"name": teacher.name, "config": plain_json(dataclasses.asdict(job.teacher_config))},
        "seed": run.seed,
        "iterations": [0, job.iterations],
        "policy_spec": spec.to_dict(),
    }
    digest = save_tensors(root / run.shard, shard_tensors(records), meta)
    entry = {"shard": run.shard, "task_name": task.name, "task": task.to_dict(), "teacher": teacher.name,
             "seed": run.seed, "iterations": [0, job.iterations], "sha256": digest}
    updates = [{"shard": run.shard, "task": task.name, "seed": run.seed, "iteration": r.iteration,
                "env_steps": r.env_steps, "mean_return": r.mean_return, **r.stats} for r in records]
    return entry, updates


def _check_chain(records: list[ImprovementRecord], record: ImprovementRecord) -> None:
    """A run must be one chain: update n starts from the policy update n-1 produced."""
    n = len(records)
    if record.iteration != n:
        raise RuntimeError(f"teacher yielded iteration {record.iteration} where {n} was due")
    if n:
        prev, cur = records[-1].next_policy, record.policy
        same = (torch.equal(prev.theta, cur.theta) and np.array_equal(prev.normalizer.mean, cur.normalizer.mean)
                and np.array_equal(prev.normalizer.var, cur.normalizer.var)
                and prev.normalizer.count == cur.normalizer.count)
        if not same:
            raise RuntimeError(f"teacher's update {n} did not start from the policy update {n - 1} produced")


def shard_tensors(records: list[ImprovementRecord]) -> dict[str, torch.Tensor]:
    """The tensors of one run's shard from its records, in order; for N updates of T steps × E envs::

        theta [N+1, P]            θ⁰ .. θᴺ (θⁿ collected τⁿ; the teacher turned it into θⁿ⁺¹)
        norm_mean, norm_var [N+1, obs] float64, norm_count [N+1] float64    each θ's observation normalizer
        mean_return [N] float64, env_steps [N] int64 (cumulative), n_unstable [N] int64
        obs [N, T, E, obs], action [N, T, E, act], log_prob, reward [N, T, E]   τⁿ (float32)
        terminated, truncated [N, T, E] uint8
        perturbation [N, E, P]    each env's θ_e − θⁿ, for a teacher that explores in parameter space (ARS) only

    The shard's JSON meta holds the task, the teacher (name and config), seed, iteration range, policy spec,
    package and format versions.
    """
    policies = [records[0].policy] + [r.next_policy for r in records]
    exps = [r.experience for r in records]
    perturbed = [e.perturbation for e in exps if e.perturbation is not None]
    if perturbed and len(perturbed) != len(exps):
        raise RuntimeError("a teacher run must perturb its parameters in every update or in none")
    return {
        "theta": torch.stack([p.theta.detach() for p in policies]),
        "norm_mean": torch.from_numpy(np.stack([p.normalizer.mean for p in policies]).astype(np.float64)),
        "norm_var": torch.from_numpy(np.stack([p.normalizer.var for p in policies]).astype(np.float64)),
        "norm_count": torch.tensor([p.normalizer.count for p in policies], dtype=torch.float64),
        "mean_return": torch.tensor([r.mean_return for r in records], dtype=torch.float64),
        "env_steps": torch.tensor([r.env_steps for r in records], dtype=torch.int64),
        "n_unstable": torch.tensor([e.n_unstable for e in exps], dtype=torch.int64),
        "obs": torch.stack([e.obs for e in exps]),
        "action": torch.stack([e.action for e in exps]),
        "log_prob": torch.stack([e.log_prob for e in exps]),
        "reward": torch.stack([e.reward for e in exps]),
        "terminated": torch.stack([e.terminated for e in exps]).to(torch.uint8),
        "truncated": torch.stack([e.truncated for e in exps]).to(torch.uint8),
        **({"perturbation": torch.stack(perturbed)} if perturbed else {}),
    }


def _check_config(root: Path, settings: dict[str, Any]) -> None:
    """Refuse a directory that holds another collection, or something that is not a dataset."""
    path = root / CONFIG_FILE
    if not path.exists():
        strangers = sorted(p.name for p in root.iterdir() if p.name not in RUN_LEFTOVERS)
        if strangers:
            raise UserError(f"out={root} is not empty and holds no {CONFIG_FILE} (found {', '.join(strangers[:3])}); "
                            "choose a new or empty directory")
        return
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read {path} ({exc}); choose another out= directory") from exc
    # A setting the collection predates reads as None there: the same collection if it is None (its default) now.
    changes = [f"{key}: {old!r} there, {new!r} now" for key, old, new in differences(saved, settings)]
    if changes:
        raise UserError(f"out={root} holds a collection with a different config ({'; '.join(changes[:4])}); "
                        "rerun with its settings to resume it, or choose another out= directory")


def _resume(root: Path, runs: list[Run]) -> list[dict[str, Any]]:
    """The verified manifest entries of ``root``; removes every leftover of interrupted runs."""
    entries = verify_dataset(root) if (root / MANIFEST).exists() else []
    planned = {run.shard for run in runs}
    unplanned = [e["shard"] for e in entries if e["shard"] not in planned]
    if unplanned:
        raise UserError(f"{root / MANIFEST} lists shards this config does not plan ({unplanned[0]}); "
                        "the manifest does not belong to this config.yaml")
    keep = {name for e in entries for name in (e["shard"], meta_path(e["shard"]).as_posix())}
    shard_dir = root / SHARD_DIR
    shard_dir.mkdir(exist_ok=True)
    ours = re.compile(r".*\.(safetensors|json)|\..*" + re.escape(TEMP_SUFFIX))
    for path in shard_dir.iterdir():
        if path.is_file() and ours.fullmatch(path.name) and f"{SHARD_DIR}/{path.name}" not in keep:
            path.unlink()
    for path in root.glob(".*" + TEMP_SUFFIX):
        path.unlink()
    return entries


def _write_manifest(root: Path, entries: list[dict[str, Any]]) -> None:
    atomic_write_json(root / MANIFEST, {"format": FORMAT, "format_version": FORMAT_VERSION, "shards": entries})


def load_manifest(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The shard entries of the dataset at ``root``, checked for shape only. A dataset directory holds::

        config.yaml       the collection config: everything that determines the data (not workers, not out)
        manifest.json     {"format", "format_version", "shards": [entry, ...]}, rewritten atomically per shard
        teacher.csv       one row per update of each listed run: env steps, batch return, the teacher's diagnostics
        collect.log       the log of every collect run into the directory
        shards/<family>-<split>-<index:04d>-s<seed>.safetensors + .json     one run (:func:`shard_tensors`)
        MUJOCO_LOG.TXT, .hydra/     MuJoCo's warnings; the resolved config of the last CLI run

    An entry is ``{"shard", "task_name", "task" (Task.to_dict()), "teacher", "seed", "iterations": [first, stop),
    "sha256"}``; ``sha256`` pins the shard's JSON, which pins its tensors (see :mod:`metaimprove.storage`).
    """
    path = Path(root) / MANIFEST
    if not path.exists():
        raise UserError(f"{root} is not a collected dataset: it has no {MANIFEST} (run `metaimprove collect out=...`)")
    manifest = read_json(path)
    if not (isinstance(manifest, dict) and manifest.get("format") == FORMAT
            and isinstance(manifest.get("shards"), list)):
        raise UserError(f"{path} is not a metaimprove dataset manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has format version {manifest.get('format_version')!r}; "
                        f"this metaimprove reads version {FORMAT_VERSION}")
    for entry in manifest["shards"]:
        if not (isinstance(entry, dict) and all(key in entry for key in ENTRY_KEYS)
                and isinstance(entry["shard"], str) and entry["shard"].startswith(f"{SHARD_DIR}/")
                and ".." not in entry["shard"]):
            raise UserError(f"{path} has a malformed entry {str(entry)[:80]}; the manifest is damaged")
    return manifest["shards"]


def load_shard(root: str | os.PathLike[str], entry: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and meta of the shard ``entry`` (from :func:`load_manifest`), verified against its sha256."""
    return load_tensors(Path(root) / entry["shard"], entry["sha256"])


def shard_task(entry: dict[str, Any]) -> Task:
    """The task of a manifest entry."""
    return Task.from_dict(entry["task"])


def verify_dataset(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Check every shard of the dataset at ``root`` against its manifest; returns the entries.

    Raises a one-line :class:`UserError` naming the corrupt or missing shards.
    """
    entries = load_manifest(root)
    bad = []
    for entry in entries:
        try:
            load_shard(root, entry)
        except UserError:
            bad.append(entry["shard"])
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UserError(f"{Path(root) / MANIFEST} lists {len(bad)} corrupt or missing shard(s): "
                        f"{', '.join(bad[:3])}{more}; delete their entries from the manifest and rerun "
                        "`metaimprove collect` to collect them again")
    return entries


def verify(cfg: VerifyConfig) -> None:
    """The ``verify`` stage: check a dataset and print what it holds."""
    root = Path(cfg.dataset)
    if not root.is_dir():
        raise UserError(f"no dataset at {root}: not a directory")
    entries = verify_dataset(root)
    planned = ""
    if (root / CONFIG_FILE).exists():
        settings = yaml.safe_load((root / CONFIG_FILE).read_text())
        planned = f" of {settings['n_tasks'] * settings['seeds']} planned"
    tasks = sorted({e["task_name"] for e in entries})
    print(f"{root}: {len(entries)}{planned} shards verified ({len(tasks)} tasks, "
          f"seeds {sorted({e['seed'] for e in entries})})")


def _as_declared(config: Any) -> Any:
    """A copy of dataclass ``config`` whose tuple-typed fields are tuples again (OmegaConf makes them lists)."""
    hints = typing.get_type_hints(type(config))
    tuples = {f.name: tuple(getattr(config, f.name)) for f in dataclasses.fields(config)
              if typing.get_origin(hints[f.name]) is tuple}
    return dataclasses.replace(config, **tuples)
