"""Extra teacher pairs from chosen start policies: relabeling rounds (the policies the operator visits,
:func:`operator_visits`) and augmentation (noised dataset policies, :func:`perturbed_starts`), both through
:func:`teacher_pairs`.

Why: see the design notes (docs/design.md, "Relabeling and augmentation").
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaimprove import seeds
from metaimprove.data.collect import load_manifest, load_shard, shard_task, shard_tensors
from metaimprove.errors import UserError
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.networks import ImprovementOperator
from metaimprove.operator.runtime import Explorer, operator_update
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import evaluate
from metaimprove.sim.tasks import Task
from metaimprove.storage import save_tensors
from metaimprove.teachers import make_teacher
from metaimprove.training.pairs import PairConfig, Pairs, concat_pairs, run_pairs

CHAIN_FORMAT = "metaimprove.teacher-chain"


@dataclass
class Start:
    """A policy on a task for the teacher (or the operator) to start from."""

    task: Task
    policy: Policy
    seed: int
    """seeds the run from this start (collection noise, value-network init, minibatches)"""
    origin: str
    """where the policy came from, recorded with its pairs (e.g. 'relabel round 1 visit 3')"""


@dataclass
class DatasetRun:
    """One run of a source dataset, as far as relabeling needs it: its task and seed (which fixed θ⁰)."""

    root: str
    entry: dict[str, Any]

    @property
    def task(self) -> Task:
        """The run's task."""
        return shard_task(self.entry)

    @property
    def seed(self) -> int:
        """The run's seed (θ⁰ = ``init_params(spec, seed)`` with an identity normalizer, as collect starts it)."""
        return int(self.entry["seed"])


def dataset_runs(datasets: list[str], tasks: set[str]) -> list[DatasetRun]:
    """The runs of ``datasets`` whose task is in ``tasks``, in manifest order."""
    return [DatasetRun(root, entry) for root in datasets for entry in load_manifest(root)
            if entry["task_name"] in tasks]


def teacher_pairs(starts: list[Start], teacher: dict[str, Any], config: PairConfig, features: FeatureConfig,
                  out: Path, prefix: str, generator: torch.Generator) -> tuple[Pairs, int]:
    """Run ``teacher`` (as recorded in a dataset) for ``max(config.ks) + 1`` updates from every start, each with a fresh
    value function and optimizer, and return the runs' hindsight pairs and the env steps spent. Each run is written
    to ``out/<prefix>-<i>.safetensors`` (shard format; ``out`` is the training run's directory, never a dataset)."""
    if not starts:
        raise UserError(f"no start policies for {prefix}; raise the number of starts")
    out.mkdir(parents=True, exist_ok=True)
    iterations = max(config.ks) + 1
    parts, steps = [], 0
    for i, start in enumerate(starts):
        # Anything drawing from global RNGs then depends on this start only (as in collect's workers).
        random.seed(start.seed)
        np.random.seed(start.seed)
        torch.manual_seed(start.seed)
        records = list(make_teacher(teacher).run(start.task, start.policy, iterations, start.seed))
        tensors = shard_tensors(records)
        meta = {"format": CHAIN_FORMAT, "task": start.task.to_dict(), "teacher": teacher, "seed": start.seed,
                "origin": start.origin, "iterations": [0, iterations], "policy_spec": start.policy.spec.to_dict()}
        save_tensors(out / f"{prefix}-{i:04d}.safetensors", tensors, meta)
        parts.append(run_pairs(tensors, meta, config, features, generator))
        steps += records[-1].env_steps
    return concat_pairs(parts), steps


def initial_starts(runs: list[DatasetRun], spec: PolicySpec, seed: int) -> list[Start]:
    """Two initial policies per run: the run's own θ⁰ (as the dataset's teacher began) and a fresh one."""
    starts = []
    for j, run in enumerate(runs):
        for init_seed, kind, seed_of_run in ((run.seed, "the dataset run's θ⁰", seeds.relabel_run(seed, j, False)),
                                             (seeds.relabel_init(seed, j), "fresh", seeds.relabel_run(seed, j, True))):
            theta = init_params(spec, torch.Generator().manual_seed(init_seed))
            starts.append(Start(run.task, Policy(spec, theta, ObsNormalizer.identity(spec.obs_dim)), seed_of_run,
                                f"{run.task.name} init seed {init_seed} ({kind})"))
    return starts


def operator_visits(op: ImprovementOperator, ckpt: OperatorCheckpoint, starts: list[Start], applications: int,
                    ask: torch.Tensor, eval_episodes: int) -> tuple[list[Start], list[float], list[float]]:
    """Apply the operator ``applications`` times from each start (as ``metaimprove apply`` does).

    Returns every visited policy (as a start for the teacher, seeded apart from its rollout), the
    deterministic return of each (``eval_episodes`` episodes, apply's protocol), and the return of
    each rollout's last policy.
    """
    visits, returns, finals = [], [], []
    for start in starts:
        explore = Explorer(ckpt, start.task, start.policy, start.seed)
        update = operator_update(op, ckpt, start.task, ask, torch.Generator().manual_seed(start.seed))
        policy, steps = start.policy, 0
        for i in range(applications):
            exp = explore(policy, steps)
            steps += exp.n_steps
            policy = update(policy, exp)
            visits.append(Start(start.task, policy, seeds.visit(start.seed, i + 1), f"{start.origin} step {i + 1}"))
            returns.append(evaluate(policy, start.task, eval_episodes, seed=start.seed))
        finals.append(returns[-1])
    return visits, returns, finals


def perturbed_starts(runs: list[DatasetRun], n: int, noise: float, seed: int) -> list[Start]:
    """``n`` policies drawn uniformly from the iterations θⁿ of ``runs``, each with Gaussian noise added:
    θ + noise · rms(block) · ε per parameter block (W, b, log_std of each layer), so every block moves by
    the same fraction of its own scale (an all-zero block, such as a fresh bias, stays); its normalizer is kept
    (the policy is θⁿ's, perturbed)."""
    if not runs:
        raise UserError("augmentation found no dataset runs on the training tasks")
    rng = np.random.default_rng(seed)
    picks = sorted((int(rng.integers(len(runs))), float(rng.random())) for _ in range(n))
    generator = torch.Generator().manual_seed(seed)
    starts, loaded = [], {}
    for j, (r, u) in enumerate(picks):
        run = runs[r]
        if r not in loaded:
            loaded = {r: load_shard(run.root, run.entry)}  # picks are sorted: each shard is read once
        t, meta = loaded[r]
        spec = PolicySpec.from_dict(meta["policy_spec"])
        it = int(u * t["reward"].shape[0])
        theta = t["theta"][it].float().clone()
        for block in spec.unflatten(theta).values():
            scale = block.square().mean().sqrt()
            block.add_(noise * scale * torch.randn(block.shape, generator=generator))
        norm = ObsNormalizer(t["norm_mean"][it].double().numpy(), t["norm_var"][it].double().numpy(),
                             float(t["norm_count"][it]))
        starts.append(Start(run.task, Policy(spec, theta, norm), seed + j,
                            f"{run.task.name} seed {run.seed} iteration {it} + noise {noise}"))
    return starts
