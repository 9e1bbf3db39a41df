"""Hindsight improvement pairs from a collected dataset.

Every teacher run on disk is a chain θ⁰ → θ¹ → … → θᴺ with the experience τⁿ each θⁿ collected. For
every iteration n and jump k ∈ ``ks`` with n + k < N this makes the pair

    (θⁿ, τⁿ, ask = [log2 k, r̄ⁿ⁺ᵏ − r̄ⁿ])  →  θⁿ⁺ᵏ

where r̄ is the mean reward per step of a batch: the ask is labelled in hindsight with the improvement
θⁿ⁺ᵏ actually reached (as Decision Transformer and G.pt condition on outcomes). The operator's output
goes with the normalizer Nⁿ⁺¹ (θⁿ's, updated with τⁿ: see :mod:`metaimprove.features`), so the target
θⁿ⁺ᵏ is folded from its own normalizer Nⁿ⁺ᵏ into Nⁿ⁺¹ — the same policy, written in the output's
coordinates. Validation holds out whole *tasks*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaimprove.collect import load_manifest, load_shard
from metaimprove.errors import UserError
from metaimprove.features import FeatureConfig, Features, encode, normalize_states, stack
from metaimprove.policy import ObsNormalizer, Policy, PolicySpec, fold_normalizer
from metaimprove.rollout import Experience
from metaimprove.tasks import Task


@dataclass
class PairConfig:
    """Which hindsight pairs to build."""

    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """jump sizes k: predict θⁿ⁺ᵏ from (θⁿ, τⁿ)"""
    val_fraction: float = 0.2
    """fraction of tasks held out for validation (whole tasks, never single pairs)"""
    seed: int = 0
    """seeds the task split and the transition subsamples"""


@dataclass
class Pairs:
    """Encoded iterations and the hindsight pairs over them."""

    spec: PolicySpec
    items: Features
    """one encoding per (run, iteration), stacked"""
    targets: torch.Tensor
    """[n_pairs, P] θⁿ⁺ᵏ in the coordinates of the source's next normalizer Nⁿ⁺¹"""
    source: torch.Tensor
    """[n_pairs] index into items"""
    target_item: torch.Tensor
    """[n_pairs] index into items of θⁿ⁺ᵏ's own encoding (its states join the loss)"""
    ask: torch.Tensor
    """[n_pairs, 2] log2 k and the achieved improvement of mean reward per step"""
    task_of_pair: list[str]
    """task name of each pair"""
    teacher: dict[str, Any]
    """the teacher (name, config) that produced the runs"""

    def select(self, tasks: set[str]) -> torch.Tensor:
        """Indices of the pairs whose task is in ``tasks``."""
        return torch.tensor([i for i, t in enumerate(self.task_of_pair) if t in tasks], dtype=torch.long)

    def batch(self, index: torch.Tensor) -> tuple[Features, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features of the sources, asks, target θs and the loss states (source's and target's) of ``index``."""
        src = {k: v[self.source[index]] for k, v in self.items.items()}
        raw = torch.cat([src["states"], self.items["states"][self.target_item[index]]], dim=1)
        states = normalize_states(raw, src["norm_mean"], src["norm_std"])
        return src, self.ask[index], self.targets[index], states


def _experience(t: dict[str, torch.Tensor], n: int) -> Experience:
    obs_dim = t["obs"].shape[-1]
    return Experience(
        obs=t["obs"][n], action=t["action"][n], log_prob=t["log_prob"][n], reward=t["reward"][n],
        terminated=t["terminated"][n].bool(), truncated=t["truncated"][n].bool(),
        trunc_obs=torch.zeros(0, obs_dim), trunc_index=torch.zeros(0, 2, dtype=torch.long),
        episode_returns=torch.zeros(0), n_unstable=int(t["n_unstable"][n]),
    )


def build_pairs(dataset: str | Path, config: PairConfig, features: FeatureConfig) -> Pairs:
    """Read every shard of ``dataset``, encode each (θⁿ, τⁿ) and enumerate the hindsight pairs."""
    entries = load_manifest(dataset)
    if not entries:
        raise UserError(f"dataset {dataset} has no shards; run `metaimprove collect out={dataset}` first")
    generator = torch.Generator().manual_seed(config.seed)
    items: list[Features] = []
    targets: list[torch.Tensor] = []
    source, target_item, ask, task_of_pair = [], [], [], []
    spec: PolicySpec | None = None
    teacher: dict[str, Any] = {}
    for entry in entries:
        t, meta = load_shard(dataset, entry)
        run_spec = PolicySpec.from_dict(meta["policy_spec"])
        if spec is not None and run_spec != spec:
            raise UserError(f"shard {entry['shard']} has policy spec {run_spec}, others have {spec}; "
                            "one operator serves one policy architecture")
        spec = run_spec
        teacher = meta["teacher"]
        n_iter = t["reward"].shape[0]
        first_item = len(items)
        norms = [ObsNormalizer(t["norm_mean"][n].double().numpy(), t["norm_var"][n].double().numpy())
                 for n in range(n_iter + 1)]
        for n in range(n_iter):
            items.append(encode(Policy(spec, t["theta"][n].float(), norms[n]), _experience(t, n), features, generator))
        reward_rate = t["reward"].double().mean(dim=(1, 2))
        name = Task.from_dict(meta["task"]).name
        for n in range(n_iter):
            for k in config.ks:
                if n + k >= n_iter:
                    continue
                source.append(first_item + n)
                target_item.append(first_item + n + k)
                targets.append(fold_normalizer(spec, t["theta"][n + k].double(), norms[n + k], norms[n + 1]).float())
                ask.append((math.log2(k), float(reward_rate[n + k] - reward_rate[n])))
                task_of_pair.append(name)
    if not source:
        raise UserError(f"dataset {dataset} has runs too short for any k in {config.ks}; collect more iterations")
    assert spec is not None
    return Pairs(
        spec=spec,
        items=stack(items),
        targets=torch.stack(targets),
        source=torch.tensor(source),
        target_item=torch.tensor(target_item),
        ask=torch.tensor(ask, dtype=torch.float32),
        task_of_pair=task_of_pair,
        teacher=teacher,
    )


def split_tasks(pairs: Pairs, val_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Train and validation task sets; validation gets ⌈fraction × tasks⌉ tasks (at least one when possible)."""
    tasks = sorted(set(pairs.task_of_pair))
    order = np.random.default_rng(seed).permutation(len(tasks))
    n_val = min(len(tasks) - 1, max(1, math.ceil(val_fraction * len(tasks)))) if val_fraction > 0 else 0
    val = {tasks[i] for i in order[:n_val]}
    return set(tasks) - val, val
