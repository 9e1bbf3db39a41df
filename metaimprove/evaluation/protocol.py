"""What every method of ``apply`` shares: its settings, the (method, task, seed) job, the start θ⁰ and the budget B."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from metaimprove.errors import UserError
from metaimprove.evaluation.baselines import training_runs
from metaimprove.interop.sb3 import load_any_policy
from metaimprove.operator.checkpoint import OperatorCheckpoint, learned_start_file
from metaimprove.sim.envs import AnyTask
from metaimprove.sim.policy import Policy
from metaimprove.sim.tasks import TaskSelection

STARTS = ("fresh", "train_init", "learned")


@dataclass
class ApplyConfig(TaskSelection):
    """Apply an operator on held-out tasks in place of RL updates, beside the baselines (equal env-step budgets)."""

    operator_path: str = "???"
    """operator checkpoint (.safetensors) written by `metaimprove train`, or a shipped operator's name"""
    out: str = "???"
    """run directory for curves.csv, timings.csv and each finished run (runs/); rerun into it to resume"""
    task_file: str | None = None
    """a JSON file holding one task (``Task.to_json()``, explicit parameters and physics) to apply on instead"""
    init: str | None = None
    """a policy file (``policy.save_policy``) every run starts from, instead of start=fresh|train_init|learned"""
    start: str = "fresh"
    """θ⁰ of run s: fresh (an initialization no training run used), train_init (a training run's θ⁰; needs dataset)
    or learned (the operator's learned start, see learned_start)"""
    learned_start: str | None = None
    """the operator's learned start θ₀, for start=learned and operator_learned_start (`metaimprove metalearn
    inner=operator` out=/policy.safetensors; default: <operator>.start.safetensors beside the checkpoint)"""
    seeds: int = 5
    """seeds per task, seed_start .. seed_start + seeds - 1 (each: its own initialization, collection, evaluation)"""
    seed_start: int = 0
    """first seed (a later batch of seeds for the same tasks: seed_start=<the seeds so far>)"""
    applications: int = 20
    """budget B in batches of the operator's teacher: operator applications / PPO updates per run"""
    budget: int | None = None
    """budget B in env steps per run instead of applications (at least one batch)"""
    methods: list[str] = field(default_factory=lambda: ["operator", "ppo", "no_update"])
    """methods: operator, operator_guarded, a teacher (ppo, ...), ppo_tuned, teacher_op_batch, no_update, nearest,
    nearest_noise, nearest_avg, avg_weights, transferred, dr, dr_ppo, nearest_ars, transferred_ars, dr_ars, meta,
    meta_ars, operator_learned_start, sac (the registry: evaluation/methods.py)"""
    dataset: str | None = None
    """the operator's training dataset (`metaimprove collect` out=): for the checkpoint baselines and train_init"""
    dr_policy: str | None = None
    """the domain-randomized policy (`metaimprove dr` out=/policy.safetensors): needed by dr, dr_ppo and dr_ars"""
    meta_policy: str | None = None
    """the meta-learned start θ₀ (`metaimprove metalearn` out=/policy.safetensors): needed by meta and meta_ars"""
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
    warmup: list[list[int]] | None = None
    """the operator's narrower first batches, [[envs, until_env_step], ...] (as features.warmup); None: the
    checkpoint's"""
    eval_episodes: int = 8
    """deterministic evaluation episodes per point"""
    workers: int = 0
    """parallel processes (0: one per CPU)"""
    threads: int = 0
    """threads each process steps its envs on; 0 = the cores left to each process (results do not depend on it)"""
    logger: str = "csv"
    """where per-run returns go besides curves.csv: csv (nowhere more), tensorboard or wandb"""


@dataclass(frozen=True)
class Job:
    """One (method, task, seed) run."""

    method: str
    task: AnyTask
    seed: int


def learned_start_path(config: ApplyConfig) -> Path:
    """Where the operator's learned start is: ``learned_start``, else the file beside the checkpoint
    (:func:`~metaimprove.operator.checkpoint.learned_start_file`)."""
    if config.learned_start is not None:
        return Path(config.learned_start)
    return learned_start_file(config.operator_path)


def initial_policy(config: ApplyConfig, ckpt: OperatorCheckpoint, seed: int) -> Policy:
    """θ⁰ of run ``seed``: the ``init`` file, a training run's θ⁰ (``start=train_init``), the operator's learned start
    (``start=learned``), or a fresh one.

    ``train_init`` cycles through the training runs' distinct seeds (collection gives runs of one seed one θ⁰).
    """
    if config.init is not None:
        return load_any_policy(Path(config.init))
    if config.start == "train_init":
        assert config.dataset is not None  # checked by apply's validation
        runs = training_runs(config.dataset)
        run_seeds = sorted({run.seed for run in runs})
        first = next(run for run in runs if run.seed == run_seeds[seed % len(run_seeds)]).first
        return Policy(first.spec, first.theta.clone(), first.normalizer.copy())
    if config.start == "learned":
        return load_any_policy(learned_start_path(config))
    return ckpt.fresh_policy(seed)


def run_budget(config: ApplyConfig, batch: int) -> int:
    """The env-step budget B of every run: ``budget``, or ``applications`` operator batches."""
    if config.budget is None:
        return config.applications * batch
    if config.budget < batch:
        raise UserError(f"budget={config.budget} env steps is smaller than one batch of the operator's teacher "
                        f"({batch} steps); give budget >= {batch}")
    return config.budget
