"""The peers an operator must beat that need no adaptation of their own: policies built from the training dataset
(``nearest``, ``nearest_noise``, ``nearest_avg``, ``avg_weights``, ``transferred``) and the ``dr`` stage that
trains a domain-randomized PPO policy.

Why these peers, and averages in one normalizer: see the design notes (docs/design.md, "Equal budgets and equal
starts" and "The normalizer is part of the policy").
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import MISSING
from tqdm import tqdm

from metaimprove.data.collect import load_manifest, load_shard, shard_task
from metaimprove.errors import UserError
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, fold_normalizer, init_params, save_policy
from metaimprove.sim.rollout import Collector, Experience, Simulator, evaluate_many
from metaimprove.sim.tasks import SPLITS, Task, TaskConfig, get_family, task_distance
from metaimprove.storage import atomic_write_bytes
from metaimprove.teachers import PPO, PPOConfig

DR_POLICY = "policy.safetensors"
"""the file the ``dr`` stage writes its policy to, inside its run directory"""





@dataclass(frozen=True)
class TrainingRun:
    """One training run of a dataset: its task, seed, initial policy θ⁰ and final policy θᴺ."""

    task: Task
    seed: int
    first: Policy
    final: Policy


def _policy(spec: PolicySpec, tensors: dict[str, torch.Tensor], n: int) -> Policy:
    norm = ObsNormalizer(tensors["norm_mean"][n].numpy().copy(), tensors["norm_var"][n].numpy().copy(),
                         float(tensors["norm_count"][n]))
    return Policy(spec, tensors["theta"][n].float().clone(), norm)


@functools.cache
def training_runs(root: str) -> tuple[TrainingRun, ...]:
    """The runs of the dataset at ``root`` in manifest order (cached per process: shards are verified once)."""
    runs = []
    for entry in load_manifest(root):
        tensors, meta = load_shard(root, entry)
        spec = PolicySpec.from_dict(meta["policy_spec"])
        runs.append(TrainingRun(shard_task(entry), int(entry["seed"]), _policy(spec, tensors, 0),
                                _policy(spec, tensors, -1)))
    if not runs:
        raise UserError(f"dataset {root} holds no runs yet; finish `metaimprove collect out={root}` first")
    return tuple(runs)


def nearest_runs(runs: tuple[TrainingRun, ...], task: Task, k: int = 1) -> list[TrainingRun]:
    """The ``k`` runs whose tasks are nearest to ``task`` (oracle distance), nearest first; ties keep manifest order."""
    order = sorted(range(len(runs)), key=lambda i: (task_distance(runs[i].task, task), i))
    return [runs[i] for i in order[:k]]


# ------------------------------------------------------------------------------------------ averaging


def pooled_normalizer(norms: list[ObsNormalizer]) -> ObsNormalizer:
    """The normalizer of all the observations the given normalizers saw together (count-weighted moments)."""
    counts = np.array([n.count for n in norms])
    weights = counts / counts.sum()
    mean = sum(w * n.mean for w, n in zip(weights, norms, strict=True))
    var = sum(w * (n.var + (n.mean - mean) ** 2) for w, n in zip(weights, norms, strict=True))
    return ObsNormalizer(np.asarray(mean), np.asarray(var), float(counts.sum()))


def average_policies(policies: list[Policy]) -> Policy:
    """The mean of ``policies`` after folding each into their pooled normalizer, so it averages functions of raw
    observations."""
    canonical = pooled_normalizer([p.normalizer for p in policies])
    spec = policies[0].spec
    folded = [fold_normalizer(spec, p.theta.double(), p.normalizer, canonical) for p in policies]
    return Policy(spec, torch.stack(folded).mean(0).float(), canonical)


def add_noise(policy: Policy, scale: float, generator: torch.Generator) -> Policy:
    """``policy`` with Gaussian noise on every weight block: std ``scale`` × the block's RMS (scale-free)."""
    theta = policy.theta.clone()
    for block in policy.spec.unflatten(theta).values():
        rms = float(block.square().mean().sqrt())
        block.add_(torch.randn(block.shape, generator=generator) * scale * rms)
    return Policy(policy.spec, theta, policy.normalizer.copy())


def shared_init_average(runs: tuple[TrainingRun, ...]) -> Policy:
    """The average final policy of the largest group of runs that share an initialization (seed).

    Ties go to the lowest seed. Averaging is only meaningful where the runs started from one θ⁰.
    """
    groups: dict[int, list[TrainingRun]] = defaultdict(list)
    for run in runs:
        groups[run.seed].append(run)
    seed = max(sorted(groups), key=lambda s: len(groups[s]))
    if len(groups[seed]) < 2:
        raise UserError("avg_weights needs training runs that share an initialization; every run of the dataset "
                        "has its own seed (collect with seeds=1 or several tasks per seed)")
    return average_policies([r.final for r in groups[seed]])


def transferred(runs: tuple[TrainingRun, ...], task: Task, episodes: int, seed: int) -> tuple[Policy, int]:
    """The training run's final policy with the best mean return on ``task`` over ``episodes`` selection episodes.

    Returns it and the env steps the selection used (every candidate's episodes): the baseline pays for them.
    """
    scores = evaluate_many([run.final for run in runs], task, episodes, seed=seed)
    best = int(np.argmax(scores))
    return runs[best].final, len(runs) * episodes * get_family(task.family).episode_length


def batch_return(exp: Experience, episode_length: int) -> float:
    """The return a batch shows per episode: mean reward per step × episode length.

    Unlike the mean over completed episodes it is defined for batches shorter than an episode, and equals it
    for batches of whole episodes.
    """
    return float(exp.reward.mean()) * episode_length


# ------------------------------------------------------------------------------------------ dr stage


@dataclass
class DRConfig:
    """Train one domain-randomized PPO policy across a split's tasks (a baseline: `apply dr_policy=...`)."""

    task: TaskConfig = MISSING
    """the task family (config group: task=<family>)"""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO hyperparameters (ppo.<field>=...); keep the batch the operator's teacher used"""
    split: str = "train"
    """split to train across: train (the operator's training tasks)"""
    start: int = 0
    """index of the first task"""
    n_tasks: int = 32
    """tasks start .. start + n_tasks - 1, visited in turn, one per update"""
    iterations: int = 1536
    """PPO updates in all (give it the env steps of the operator's dataset: 32 tasks × 48 updates is 1536)"""
    seed: int = 0
    """seeds θ⁰, the value network, the collectors and the minibatch shuffles"""
    hidden: list[int] = field(default_factory=lambda: [32, 32])
    """hidden layer sizes of the policy MLP (the operator's policy spec)"""
    out: str = MISSING
    """run directory: policy.safetensors and log.csv (default runs/dr/<date>_<time>)"""


def train_dr(cfg: DRConfig) -> Path:
    """The ``dr`` stage: PPO on task ``i mod n_tasks`` at update ``i``, its value network told no task; writes the
    policy and a per-update log."""
    if cfg.split not in SPLITS:
        raise UserError(f"split must be one of {list(SPLITS)}, got '{cfg.split}'")
    if cfg.n_tasks < 1 or cfg.iterations < 1 or cfg.start < 0 or min(cfg.hidden, default=0) < 1:
        raise UserError("n_tasks, iterations and hidden sizes must be >= 1 and start >= 0")
    tasks = get_family(cfg.task.family).tasks(cfg.split, cfg.n_tasks, start=cfg.start)
    sim = Simulator(tasks[0], n_envs=1, seed=cfg.seed)
    spec = PolicySpec(sim.obs_dim, sim.act_dim, hidden=tuple(cfg.hidden))
    ppo_config = PPOConfig(**{**vars(cfg.ppo), "value_hidden": tuple(cfg.ppo.value_hidden)})
    teacher = PPO(ppo_config)
    teacher.start(tasks[0], Policy(spec, init_params(spec, torch.Generator().manual_seed(cfg.seed)),
                                   ObsNormalizer.identity(spec.obs_dim)), cfg.seed)
    # One collector per task, so that each task's episodes continue its own seeded stream.
    collectors = [Collector(task, ppo_config.n_envs, seed=cfg.seed) for task in tasks]
    length = get_family(cfg.task.family).episode_length
    log = []
    for i in tqdm(range(cfg.iterations), desc="dr", unit="update", dynamic_ncols=True):
        exp = collectors[i % len(tasks)].collect(teacher.policy, ppo_config.n_steps)
        teacher.improve(exp)
        log.append((i, tasks[i % len(tasks)].name, batch_return(exp, length)))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_policy(out / DR_POLICY, teacher.policy)
    lines = [["iteration", "task", "batch_return"], *([str(v) for v in row] for row in log)]
    atomic_write_bytes(out / "log.csv", "".join(",".join(r) + "\n" for r in lines).encode())
    last = [r for _, _, r in log[-len(tasks):]]
    print(f"dr: {cfg.iterations} PPO updates across {len(tasks)} {cfg.split} tasks; mean batch return over the last "
          f"{len(last)} updates {sum(last) / len(last):.1f}; policy in {out / DR_POLICY}")
    return out / DR_POLICY

