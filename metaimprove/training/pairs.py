"""Hindsight improvement pairs ``(θⁿ, τⁿ, ask) → θⁿ⁺ᵏ`` from collected datasets, and the task-level validation split.

Why hindsight asks, best-policy targets and run weights, and whole tasks held out: see the design notes
(docs/design.md, "Hindsight pairs and the ask").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaimprove.data.collect import load_manifest, load_shard
from metaimprove.errors import UserError
from metaimprove.operator.features import (
    FeatureConfig,
    Features,
    application_summary,
    encode,
    env_subset,
    next_normalizer,
    normalize_states,
    stack,
)
from metaimprove.operator.networks import ApplicationMemory
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, fold_normalizer
from metaimprove.sim.rollout import Experience
from metaimprove.sim.tasks import Task
from metaimprove.storage import tensor_names


@dataclass
class PairConfig:
    """Which hindsight pairs to build."""

    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """jump sizes k: predict θⁿ⁺ᵏ from (θⁿ, τⁿ) (with targets=next), and the jumps apply may ask for"""
    val_fraction: float = 0.2
    """fraction of tasks held out for validation (whole tasks, never single pairs)"""
    seed: int = 0
    """seeds the task split and the transition subsamples"""
    max_tasks: int | None = None
    """use only the runs of each dataset's first N tasks by index (a task-count scaling study); default all"""
    targets: str = "next"
    """what θⁿ is paired with: next (θⁿ⁺ᵏ for each k in ks), best (the highest-r̄ θ its run reached after n) or
    best_across_seeds (the highest-r̄ θ any run of its task reached after iteration n)"""
    weight_by_improvement: bool = False
    """weight each pair's loss by how much its run improved (last minus first r̄, clipped at 0, mean 1 over runs)"""


TARGETS = ("next", "best", "best_across_seeds")
"""The kinds of target θ a source θⁿ is paired with (``pairs.targets``), each with the ask
``[log2 jump, r̄(target) − r̄ⁿ]``:

- ``next``: θⁿ⁺ᵏ of its own run for every k in ``ks`` with n + k < N (the teacher's k-step hindsight pairs).
- ``best``: one pair per n, the θᵐ of its own run with the highest r̄ among m = n+1 .. N−1 (the earliest on a tie);
  the jump is m − n. ``ks`` then only names the jumps apply may ask for: the checkpoint's ask quantiles for a k come
  from the pairs whose best lay exactly k ahead.
- ``best_across_seeds``: as ``best``, over every run of the same task in the dataset (its seeds): the highest-r̄ θᵐ
  of any of them with m > n. The jump is m − n, the steps from n to that run's index: the same iteration count a
  run of this teacher took to get there, so that a jump means the same in every kind of target and is never below 1
  (a fixed code would tell the operator nothing about how far the optimum lies). A run alone in its task (and the
  teacher runs relabeling and augmentation add) uses its own best.
"""


@dataclass
class Pairs:
    """Encoded iterations and the hindsight pairs over them.

    Every teacher run is a chain θ⁰ → θ¹ → … → θᴺ with the experience τⁿ each θⁿ collected. For every iteration n
    and jump k ∈ ``ks`` with n + k < N there is a pair ``(θⁿ, τⁿ, ask = [log2 k, r̄ⁿ⁺ᵏ − r̄ⁿ]) → θⁿ⁺ᵏ``, r̄ the mean
    reward per step of a batch (with ``pairs.targets`` best or best_across_seeds instead one pair per n, its target
    the best θ reached later, see :data:`TARGETS`). The target is folded from its own normalizer into Nⁿ⁺¹, the one
    the source's output goes with (θⁿ's updated with τⁿ, or with ``features.n_envs`` with the subset of τⁿ's envs
    the operator reads, while the target stays the teacher's step from the whole batch). With
    ``features.task_input`` each encoding also carries its task's vector, and every pair comes from one task family.
    """

    spec: PolicySpec
    items: Features
    """one encoding per (run, iteration), stacked run by run in iteration order; besides :data:`Features`, each
    item's ``iteration`` n in its run and ``summary``, the teacher's application n as an operator's memory reads it
    (:func:`~metaimprove.operator.features.application_summary`)"""
    targets: torch.Tensor
    """[n_pairs, P] the target θ (θⁿ⁺ᵏ) in the coordinates of the normalizer the source's output goes with (Nⁿ⁺¹)"""
    source: torch.Tensor
    """[n_pairs] index into items"""
    target_item: torch.Tensor
    """[n_pairs] index into items of the target's own encoding (its states join the loss)"""
    ask: torch.Tensor
    """[n_pairs, 2] log2 of the jump to the target and the improvement of mean reward per step it achieved"""
    task_of_pair: list[str]
    """task name of each pair"""
    teacher: dict[str, Any]
    """the teacher (name, config) that produced the runs"""
    batch_shape: tuple[int, ...] = ()
    """steps × environments of every τ (what the features are computed from)"""
    task_family: str | None = None
    """with ``features.task_input``: the family whose task vectors the items carry (None otherwise)"""
    run_weight: torch.Tensor | None = None
    """[n_pairs] the loss weight of each pair's run (``pairs.weight_by_improvement``); None: every pair weighs 1"""

    @property
    def weight(self) -> torch.Tensor:
        """``[n_pairs]`` each pair's run weight (ones without ``run_weight``)."""
        return torch.ones(len(self.source)) if self.run_weight is None else self.run_weight

    def select(self, tasks: set[str]) -> torch.Tensor:
        """Indices of the pairs whose task is in ``tasks``."""
        return torch.tensor([i for i, t in enumerate(self.task_of_pair) if t in tasks], dtype=torch.long)

    def batch(self, index: torch.Tensor) -> tuple[Features, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features of the sources, asks, target θs and the loss states (source's and target's) of ``index``."""
        src = {k: v[self.source[index]] for k, v in self.items.items()}
        raw = torch.cat([src["states"], self.items["states"][self.target_item[index]]], dim=1)
        states = normalize_states(raw, src["norm_mean"], src["norm_std"])
        return src, self.ask[index], self.targets[index], states

    def memory_states(self, memory: ApplicationMemory, index: torch.Tensor) -> torch.Tensor:
        """The memory state ``[len(index), memory.width]`` of each source of ``index``: hₙ from the summaries of
        its run's iterations 0 .. n−1 (the run's items lie just before it), as apply's state at application n."""
        items = self.source[index]
        n = self.items["iteration"][items]
        rows = ((items - n).unsqueeze(1) + torch.arange(int(n.max()) + 1)).clamp_max(len(self.items["iteration"]) - 1)
        states = memory.unroll(self.items["summary"][rows].to(memory.cell.weight_ih.device))
        return states[torch.arange(len(items)), n.to(states.device)]


def _experience(t: dict[str, torch.Tensor], n: int) -> Experience:
    obs_dim = t["obs"].shape[-1]
    return Experience(
        obs=t["obs"][n], action=t["action"][n], log_prob=t["log_prob"][n], reward=t["reward"][n],
        terminated=t["terminated"][n].bool(), truncated=t["truncated"][n].bool(),
        trunc_obs=torch.zeros(0, obs_dim), trunc_index=torch.zeros(0, 2, dtype=torch.long),
        episode_returns=torch.zeros(0), n_unstable=int(t["n_unstable"][n]),
        perturbation=t["perturbation"][n] if "perturbation" in t else None,
    )


@dataclass
class EncodedRun:
    """One teacher run θ⁰ → … → θᴺ⁻¹ encoded: its items and what pairs with it as source or target are made of."""

    spec: PolicySpec
    task: Task
    teacher: dict[str, Any]
    """the teacher (name, config) that produced it"""
    items: Features
    """one encoding per iteration n < N"""
    theta: torch.Tensor
    """[≥ N, P] its θs, each in the coordinates of its own normalizer"""
    norms: list[ObsNormalizer]
    """each θⁿ's normalizer"""
    outputs: list[ObsNormalizer]
    """the normalizer each θⁿ's operator output goes with (Nⁿ⁺¹, or θⁿ's updated with the envs the operator reads)"""
    reward_rate: torch.Tensor
    """[N] mean reward per step of each batch (float64)"""
    batch_shape: tuple[int, ...]
    """steps × environments of every τ the operator reads"""

    @property
    def improvement(self) -> float:
        """How much the run improved: its last batch's r̄ minus its first's, clipped at 0."""
        return max(0.0, float(self.reward_rate[-1] - self.reward_rate[0]))


def encode_run(t: dict[str, torch.Tensor], meta: dict[str, Any], features: FeatureConfig,
               generator: torch.Generator) -> EncodedRun:
    """Encode one teacher run (shard tensors ``t`` and meta, see :mod:`metaimprove.data.collect`)."""
    spec = PolicySpec.from_dict(meta["policy_spec"])
    n_iter = t["reward"].shape[0]
    # With its count: encode folds τ into each normalizer, weighting it against what θⁿ's normalizer has seen.
    norms = [ObsNormalizer(t["norm_mean"][n].double().numpy(), t["norm_var"][n].double().numpy(),
                           float(t["norm_count"][n])) for n in range(n_iter + 1)]
    task = Task.from_dict(meta["task"])
    policies = [Policy(spec, t["theta"][n].float(), norms[n]) for n in range(n_iter)]
    exps = [_experience(t, n) for n in range(n_iter)]
    # The normalizer each source's output goes with: the teacher's next one, or, when the operator reads a
    # subset of τ's envs, θⁿ's updated with that subset (what apply computes from a batch that wide).
    outputs = norms[1:]
    if features.n_envs is not None:
        exps = [env_subset(exp, features.n_envs, generator) for exp in exps]
        outputs = [next_normalizer(policy, exp) for policy, exp in zip(policies, exps, strict=True)]
    items = stack([encode(policy, exp, features, generator, task) for policy, exp in zip(policies, exps, strict=True)])
    # The teacher's steps as the operator's would be read: θⁿ⁺¹ in the coordinates of the source's output.
    steps = torch.stack([fold_normalizer(spec, t["theta"][n + 1].double(), norms[n + 1], outputs[n]).float()
                         for n in range(n_iter)]) - items["theta"]
    iteration = torch.arange(n_iter)
    items["iteration"] = iteration
    items["summary"] = application_summary(items["returns"], items["grad_log_norm"], steps,
                                           torch.cat([torch.zeros_like(steps[:1]), steps[:-1]]), iteration)
    return EncodedRun(spec=spec, task=task, teacher=meta["teacher"], items=items, theta=t["theta"],
                      norms=norms, outputs=outputs, reward_rate=t["reward"].double().mean(dim=(1, 2)),
                      batch_shape=(t["reward"].shape[1], features.n_envs or t["reward"].shape[2]))


def _targets(runs: list[EncodedRun], i: int, n: int, peers: list[int], config: PairConfig) -> list[tuple[int, int]]:
    """The targets ``(run, iteration)`` of source θⁿ of ``runs[i]`` (see :data:`TARGETS`); ``peers``: the runs of
    its task that ``best_across_seeds`` searches."""
    n_iter = len(runs[i].reward_rate)
    if config.targets == "next":
        return [(i, n + k) for k in config.ks if n + k < n_iter]
    searched = peers if config.targets == "best_across_seeds" else [i]
    later = [(float(runs[j].reward_rate[m]), -m, j) for j in searched for m in range(n + 1, len(runs[j].reward_rate))]
    if not later:
        return []
    _, earliest, j = max(later)
    return [(j, -earliest)]


def runs_pairs(runs: list[EncodedRun], config: PairConfig, features: FeatureConfig) -> Pairs:
    """The pairs of ``runs`` (of one policy spec) under ``config.targets``, one item per iteration of each run in
    order; ``best_across_seeds`` searches the runs here of each run's task. Runs too short have no pairs."""
    spec = runs[0].spec
    peers: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        peers.setdefault(run.task.name, []).append(i)
    offsets = np.cumsum([0] + [len(run.reward_rate) for run in runs[:-1]]).tolist()
    gains = [run.improvement for run in runs]
    scale = sum(gains) / len(gains)
    targets, source, target_item, ask, task_of_pair, run_weight = [], [], [], [], [], []
    for i, run in enumerate(runs):
        for n in range(len(run.reward_rate)):
            for j, m in _targets(runs, i, n, peers[run.task.name], config):
                source.append(offsets[i] + n)
                target_item.append(offsets[j] + m)
                target = fold_normalizer(spec, runs[j].theta[m].double(), runs[j].norms[m], run.outputs[n])
                targets.append(target.float())
                ask.append((math.log2(m - n), float(runs[j].reward_rate[m] - run.reward_rate[n])))
                task_of_pair.append(run.task.name)
                run_weight.append(gains[i] / scale if scale > 0 else 1.0)
    return Pairs(
        spec=spec,
        items={key: torch.cat([run.items[key] for run in runs]) for key in runs[0].items},
        targets=torch.stack(targets) if targets else torch.zeros(0, spec.n_params),
        source=torch.tensor(source, dtype=torch.long),
        target_item=torch.tensor(target_item, dtype=torch.long),
        ask=torch.tensor(ask, dtype=torch.float32).reshape(-1, 2),
        task_of_pair=task_of_pair,
        teacher=runs[0].teacher,
        batch_shape=runs[0].batch_shape,
        task_family=runs[0].task.family if features.task_input else None,
        run_weight=torch.tensor(run_weight, dtype=torch.float32) if config.weight_by_improvement else None,
    )


def run_pairs(t: dict[str, torch.Tensor], meta: dict[str, Any], config: PairConfig, features: FeatureConfig,
              generator: torch.Generator) -> Pairs:
    """Encode one teacher run (shard tensors ``t`` and meta, see :mod:`metaimprove.data.collect`) and enumerate its
    pairs (a run alone: ``best_across_seeds`` is its own best, and with ``weight_by_improvement`` it weighs 1); the
    run may be too short for any (then it has none)."""
    return runs_pairs([encode_run(t, meta, features, generator)], config, features)


def concat_pairs(parts: list[Pairs]) -> Pairs:
    """One :class:`Pairs` holding every part's items and pairs (indices shifted); the first part's teacher.

    The parts must share the policy spec and the experience batch shape (callers name the sources in errors);
    parts that carry task vectors must share their family (a vector's entries mean different things in another).
    """
    first = parts[0]
    families = sorted({p.task_family for p in parts if p.task_family is not None})
    if len(families) > 1:
        raise UserError(f"features.task_input reads one family's task vectors, but the pairs come from {families}; "
                        "train an oracle operator on one family")
    offsets = np.cumsum([0] + [len(p.items["theta"]) for p in parts[:-1]]).tolist()
    return Pairs(
        spec=first.spec,
        items={key: torch.cat([p.items[key] for p in parts]) for key in first.items},
        targets=torch.cat([p.targets for p in parts]),
        source=torch.cat([p.source + off for p, off in zip(parts, offsets, strict=True)]),
        target_item=torch.cat([p.target_item + off for p, off in zip(parts, offsets, strict=True)]),
        ask=torch.cat([p.ask for p in parts]),
        task_of_pair=[name for p in parts for name in p.task_of_pair],
        teacher=first.teacher,
        batch_shape=first.batch_shape,
        task_family=first.task_family,
        run_weight=None if all(p.run_weight is None for p in parts) else torch.cat([p.weight for p in parts]),
    )


def build_pairs(dataset: str | Path, config: PairConfig, features: FeatureConfig) -> Pairs:
    """Read every shard of ``dataset``, encode each (θⁿ, τⁿ) and enumerate the hindsight pairs."""
    if config.targets not in TARGETS:
        raise UserError(f"pairs.targets={config.targets} is not a kind of target; give one of {list(TARGETS)}")
    entries = load_manifest(dataset)
    if not entries:
        raise UserError(f"dataset {dataset} has no shards; run `metaimprove collect out={dataset}` first")
    if config.max_tasks is not None:
        indices = sorted({int(e["task"]["index"]) for e in entries})
        if not 1 <= config.max_tasks <= len(indices):
            raise UserError(f"pairs.max_tasks={config.max_tasks} but dataset {dataset} holds {len(indices)} tasks; "
                            f"give 1 .. {len(indices)}")
        kept = set(indices[:config.max_tasks])
        entries = [e for e in entries if int(e["task"]["index"]) in kept]
    if config.targets == "best_across_seeds" and len(entries) == len({e["task_name"] for e in entries}):
        raise UserError(f"pairs.targets=best_across_seeds compares the seeds of a task, but dataset {dataset} holds "
                        "one run per task; use pairs.targets=best or collect several seeds")
    generator = torch.Generator().manual_seed(config.seed)
    runs: list[EncodedRun] = []
    for entry in entries:
        run = encode_run(*load_shard(dataset, entry), features, generator)
        if runs and run.spec != runs[0].spec:
            raise UserError(f"shard {entry['shard']} has policy spec {run.spec}, others have {runs[0].spec}; "
                            "one operator serves one policy architecture")
        runs.append(run)
    pairs = runs_pairs(runs, config, features)
    if not len(pairs.source):
        jumps = f"any k in {config.ks}" if config.targets == "next" else "a later iteration"
        raise UserError(f"dataset {dataset} has runs too short for {jumps}; collect more iterations")
    return pairs


def dataset_dirs(dataset: str | list[str] | tuple[str, ...]) -> list[str]:
    """The dataset directories of a ``dataset=`` setting: one directory, a list, or a comma-separated list."""
    names = [dataset] if isinstance(dataset, str) else [str(d) for d in dataset]
    dirs = [part.strip() for name in names for part in name.split(",") if part.strip()]
    if not dirs:
        raise UserError("dataset= names no directory; give one (dataset=DIR) or several (dataset=[DIR_A,DIR_B])")
    return dirs


@dataclass
class PairGroups:
    """The pairs of a union of datasets, one :class:`Pairs` per policy spec (several only for a shape-agnostic
    operator), under one numbering: pair ``i`` of group ``g`` is pair ``offset(g) + i``. A batch of the fit holds
    one group's pairs (their θs have one length)."""

    groups: list[Pairs]

    @property
    def offsets(self) -> list[int]:
        """The number of each group's first pair."""
        return np.cumsum([0] + [len(g.source) for g in self.groups[:-1]]).tolist()

    @property
    def ask(self) -> torch.Tensor:
        """``[n_pairs, 2]`` every pair's ask."""
        return torch.cat([g.ask for g in self.groups])

    @property
    def weight(self) -> torch.Tensor:
        """``[n_pairs]`` every pair's run weight."""
        return torch.cat([g.weight for g in self.groups])

    @property
    def task_of_pair(self) -> list[str]:
        """Every pair's task name."""
        return [name for g in self.groups for name in g.task_of_pair]

    @property
    def first(self) -> Pairs:
        """The first dataset's group: its spec, teacher and batch shape are the operator's."""
        return self.groups[0]

    def select(self, tasks: set[str]) -> torch.Tensor:
        """Numbers of the pairs whose task is in ``tasks``."""
        return torch.tensor([i for i, t in enumerate(self.task_of_pair) if t in tasks], dtype=torch.long)

    def parts(self, index: torch.Tensor) -> list[tuple[Pairs, torch.Tensor, torch.Tensor]]:
        """``index`` by group: for each group it touches, the group, its own indices of those pairs and their
        positions in ``index``."""
        out = []
        for group, offset in zip(self.groups, self.offsets, strict=True):
            at = ((index >= offset) & (index < offset + len(group.source))).nonzero().squeeze(-1)
            if len(at):
                out.append((group, index[at] - offset, at))
        return out

    def add(self, extra: Pairs) -> None:
        """Add pairs to the group of their spec."""
        [g] = [g for g, group in enumerate(self.groups) if group.spec == extra.spec]
        self.groups[g] = concat_pairs([self.groups[g], extra])


def build_groups(datasets: list[str], config: PairConfig, features: FeatureConfig) -> PairGroups:
    """The pairs of every dataset in ``datasets`` together (e.g. PPO and ARS collections of one family, or, for a
    shape-agnostic operator, collections of several robots), grouped by policy spec in order of appearance.

    Their experience batch shapes (steps × environments per update) must agree: the batch the operator collects
    when applied is defined by that shape. Their policy specs must agree unless ``features.agnostic`` (a per-family
    operator serves one architecture), and a shape-agnostic operator's teachers must explore one way: it explores
    as its first dataset's teacher on robots it never saw, and a union whose robots came with different kinds of
    batch would teach it which robot it is from how the batch was explored.
    """
    parts = [build_pairs(d, config, features) for d in datasets]
    for name, part in zip(datasets[1:], parts[1:], strict=True):
        if part.spec != parts[0].spec and not features.agnostic:
            raise UserError(f"datasets {datasets[0]} and {name} hold different policy specs "
                            f"({parts[0].spec} vs {part.spec}); a union must share one policy architecture, or train "
                            "a shape-agnostic operator (features.agnostic=true)")
        kinds = (parts[0].teacher["name"], part.teacher["name"])
        if features.agnostic and kinds[0] != kinds[1]:
            raise UserError(f"datasets {datasets[0]} and {name} come from teachers that explore differently "
                            f"({kinds[0]} vs {kinds[1]}: ARS perturbs parameters, PPO adds action noise); a "
                            "shape-agnostic operator explores one way on every robot, so train it on one teacher's "
                            "collections")
        if part.batch_shape != parts[0].batch_shape:
            raise UserError(f"datasets {datasets[0]} and {name} collected batches of different shapes "
                            f"(steps × envs {parts[0].batch_shape} vs {part.batch_shape}); a union must share the "
                            "teacher's batch size")
    specs = list(dict.fromkeys(part.spec for part in parts))
    groups = [[part for part in parts if part.spec == spec] for spec in specs]
    return PairGroups([concat_pairs(g) if len(g) > 1 else g[0] for g in groups])


def build_union(datasets: list[str], config: PairConfig, features: FeatureConfig) -> Pairs:
    """The pairs of every dataset in ``datasets`` together, as :func:`build_groups` checks them, of one policy
    spec."""
    union = build_groups(datasets, config, features)
    if len(union.groups) > 1:
        raise UserError(f"datasets {', '.join(datasets)} hold {len(union.groups)} policy specs; read them with "
                        "build_groups")
    return union.first


def resolve_features(datasets: list[str], features: FeatureConfig) -> FeatureConfig:
    """``features`` with ``es_gradient`` decided from ``datasets`` where it is None: on exactly when they record
    parameter perturbations (a teacher that explores in parameter space, such as ARS). Refuses
    ``es_gradient=true`` on datasets that record none."""
    firsts = [(d, entries[0]) for d in datasets if (entries := load_manifest(d))]
    perturbed = any("perturbation" in tensor_names(Path(d) / entry["shard"]) for d, entry in firsts)
    if features.es_gradient is None:
        return replace(features, es_gradient=perturbed)
    if features.es_gradient and not perturbed:
        raise UserError(f"features.es_gradient=true, but {', '.join(datasets)} record(s) no parameter perturbations "
                        "(teachers exploring by action noise, or ARS data collected before metaimprove recorded "
                        "them: collect it again); drop the setting")
    return features


def split_tasks(pairs: Pairs | PairGroups, val_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Train and validation task sets; validation gets ⌈fraction × tasks⌉ tasks (at least one when possible)."""
    tasks = sorted(set(pairs.task_of_pair))
    order = np.random.default_rng(seed).permutation(len(tasks))
    n_val = min(len(tasks) - 1, max(1, math.ceil(val_fraction * len(tasks)))) if val_fraction > 0 else 0
    val = {tasks[i] for i in order[:n_val]}
    return set(tasks) - val, val
