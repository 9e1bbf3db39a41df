"""The ``train`` stage: supervised fit of the improvement operator to hindsight pairs with a behavioural loss and
early stopping on validation tasks, with optional augmentation and relabeling rounds.

Why: see the design notes (docs/design.md, "Behavioural loss" and "Relabeling and augmentation").
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from metaimprove.errors import UserError
from metaimprove.operator.checkpoint import OperatorCheckpoint, default_ask_k
from metaimprove.operator.features import FeatureConfig, warmup_phases
from metaimprove.operator.networks import ImprovementOperator, OperatorConfig
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.sim.policy import PolicySpec, forward
from metaimprove.storage import atomic_write_csv
from metaimprove.training.pairs import (
    PairConfig,
    Pairs,
    build_union,
    concat_pairs,
    dataset_dirs,
    resolve_features,
    split_tasks,
)
from metaimprove.training.relabel import dataset_runs, initial_starts, operator_visits, perturbed_starts, teacher_pairs


@dataclass
class TrainConfig:
    """Fit the improvement operator to a collected dataset (hindsight pairs, behavioural loss)."""

    dataset: Any = "???"
    """directory written by `metaimprove collect`, or several for their union: dataset=[DIR_A,DIR_B] or 'DIR_A,DIR_B'"""
    out: str = "???"
    """directory for the checkpoint and metrics"""
    operator: OperatorConfig = field(default_factory=OperatorConfig)
    """operator architecture"""
    features: FeatureConfig = field(default_factory=FeatureConfig)
    """what the operator sees of τ"""
    pairs: PairConfig = field(default_factory=PairConfig)
    """hindsight pairs and the task-level validation split"""
    batch_size: int = 64
    """pairs per gradient step"""
    lr: float = 1e-3
    """AdamW learning rate"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    max_epochs: int = 200
    """upper bound on passes over the training pairs"""
    patience: int = 15
    """stop after this many epochs without a better validation loss"""
    param_loss_weight: float = 1e-3
    """weight of the parameter-space term ‖θ' − θⁿ⁺ᵏ‖² / P"""
    mean_loss_weight: float = 1.0
    """weight of the KL's action-mean part (evaluation uses the deterministic mean action)"""
    std_loss_weight: float = 1.0
    """weight of the KL's log-std part"""
    normalize_by_k: bool = True
    """divide each pair's loss by the θ'=θ loss of its k on the training pairs, so large k do not dominate"""
    seed: int = 0
    """seeds initialization and batching"""
    augment_noise: float = 0.1
    """augmentation: Gaussian noise added to dataset policies, as a fraction of each parameter block's RMS"""
    augment_starts: int = 0
    """augmentation: perturbed dataset policies to run the teacher from (max(ks)+1 updates each; 0 = none)"""
    relabel_rounds: int = 0
    """relabeling rounds: apply the operator on training tasks, run the teacher from the visited policies, retrain"""
    relabel_tasks: int = 4
    """training tasks the operator is applied on per round (each from its dataset θ⁰ and from a fresh init)"""
    relabel_applications: int = 8
    """operator applications per relabel rollout"""
    relabel_starts: int = 8
    """visited policies (drawn at random) the teacher runs max(ks)+1 updates from, per round"""
    ask_k: int | None = None
    """the jump k (one of pairs.ks) the checkpoint asks for unless apply is told otherwise (default: the trained k
    nearest 2, see operator.checkpoint.DEFAULT_ASK_K); choose it on validation tasks"""
    relabel_ask_k: int | None = None
    """jump k the operator is asked for in relabel rollouts (default: ask_k, as apply)"""
    relabel_eval_episodes: int = 2
    """deterministic episodes per visited policy for the returns in relabel.csv"""


def behavioural_loss(spec: PolicySpec, theta: torch.Tensor, target: torch.Tensor, states: torch.Tensor,
                     mean_weight: float = 1.0, std_weight: float = 1.0) -> torch.Tensor:
    """Mean KL(π_θ ‖ π_target) per pair ``[B]`` on normalized ``states [B, S, obs]`` (zero iff same actions).

    It splits into a mean part (mean − t_mean)² / 2σ_target² and a log-std part; the weights scale each. Why this
    direction: see the design notes (docs/design.md, "Behavioural loss").
    """
    mean, log_std = forward(spec, theta, states)
    t_mean, t_log_std = forward(spec, target, states)
    t_inv_var = torch.exp(-2 * t_log_std)
    mean_part = (mean - t_mean).square() * t_inv_var / 2
    std_part = t_log_std - log_std + torch.exp(2 * log_std) * t_inv_var / 2 - 0.5
    return mean_weight * mean_part.sum(-1).mean(-1) + std_weight * std_part.sum(-1).squeeze(-1)


def _pair_loss(spec: PolicySpec, theta: torch.Tensor, target: torch.Tensor, states: torch.Tensor,
               config: TrainConfig) -> torch.Tensor:
    loss = behavioural_loss(spec, theta, target, states, config.mean_loss_weight, config.std_loss_weight)
    if config.param_loss_weight:
        loss = loss + config.param_loss_weight * (theta - target).square().mean(-1)
    return loss


def _loss(op: ImprovementOperator, pairs: Pairs, index: torch.Tensor, config: TrainConfig,
          pair_weight: torch.Tensor) -> torch.Tensor:
    feats, ask, target, states = pairs.batch(index)
    return _pair_loss(pairs.spec, op(feats, ask), target, states, config) * pair_weight[index]


def _evaluate(op: ImprovementOperator, pairs: Pairs, index: torch.Tensor, config: TrainConfig,
              pair_weight: torch.Tensor) -> float:
    if len(index) == 0:
        return math.nan
    with torch.no_grad():
        total = sum(float(_loss(op, pairs, chunk, config, pair_weight).sum())
                    for chunk in index.split(config.batch_size * 4))
    return total / len(index)


def _identity_losses(pairs: Pairs, index: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Per-pair loss of θ' = θ on ``index`` ``[len(index)]``."""
    out = []
    with torch.no_grad():
        for chunk in index.split(1024):
            feats, _, target, states = pairs.batch(chunk)
            out.append(_pair_loss(pairs.spec, feats["theta"], target, states, config))
    return torch.cat(out) if out else torch.zeros(0)


def pair_weights(pairs: Pairs, train_idx: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Per-pair loss weights ``[n_pairs]``: ones, or with ``normalize_by_k`` one over the mean θ'=θ loss of the
    pair's k on the training pairs (every k then weighs the same however far its targets lie)."""
    weight = torch.ones(len(pairs.source))
    if not config.normalize_by_k or len(train_idx) == 0:
        return weight
    identity = _identity_losses(pairs, train_idx, config)
    log_k = pairs.ask[:, 0]
    for value in log_k[train_idx].unique():
        scale = identity[log_k[train_idx] == value].mean().clamp_min(1e-8)
        weight[log_k == value] = 1.0 / float(scale)
    return weight


def _identity_loss(pairs: Pairs, index: torch.Tensor, config: TrainConfig, pair_weight: torch.Tensor) -> float:
    """Validation loss of θ' = θ: the bar an operator must clear to have learned anything."""
    if len(index) == 0:
        return math.nan
    return float((_identity_losses(pairs, index, config) * pair_weight[index]).mean())


def fit(op: ImprovementOperator, pairs: Pairs, train_idx: torch.Tensor, val_idx: torch.Tensor,
        config: TrainConfig, on_best: Callable[[int, float, float], None] | None = None) -> list[dict[str, float]]:
    """Train ``op`` on ``train_idx`` pairs with early stopping on the ``val_idx`` loss (the training loss if there
    is no validation set). Calls ``on_best(epoch, val_loss, identity_loss)`` at each improvement (the loss of
    θ' = θ on the same pairs); returns per-epoch metrics."""
    opt = torch.optim.AdamW(op.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    weight = pair_weights(pairs, train_idx, config)
    identity = _identity_loss(pairs, val_idx if len(val_idx) else train_idx, config, weight)
    best, best_epoch, rows = math.inf, -1, []
    start = time.perf_counter()
    bar = tqdm(range(config.max_epochs), desc="train", unit="epoch", dynamic_ncols=True, disable=None)
    for epoch in bar:
        op.train()
        losses = []
        for index in train_idx[torch.randperm(len(train_idx), generator=generator)].split(config.batch_size):
            loss = _loss(op, pairs, index, config, weight).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(op.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
        op.eval()
        train_loss = sum(losses) / len(losses)
        val = _evaluate(op, pairs, val_idx, config, weight)
        monitored = val if len(val_idx) else train_loss
        rows.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val, "val_identity_loss": identity,
                     "seconds": time.perf_counter() - start})
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val:.4f}", identity=f"{identity:.4f}")
        if monitored < best:
            best, best_epoch = monitored, epoch
            if on_best is not None:
                on_best(epoch, monitored, identity)
        elif epoch - best_epoch >= config.patience:
            break
    return rows


def _check(config: TrainConfig) -> None:
    if config.batch_size < 1 or config.max_epochs < 1 or config.lr <= 0:
        raise UserError("batch_size and max_epochs must be >= 1 and lr > 0")
    if not config.pairs.ks or any(k < 1 for k in config.pairs.ks):
        raise UserError(f"pairs.ks must be a non-empty list of jumps >= 1, got {config.pairs.ks}")
    if config.ask_k is not None and config.ask_k not in config.pairs.ks:
        raise UserError(f"ask_k={config.ask_k} is not a trained jump; give one of pairs.ks {list(config.pairs.ks)}")
    if config.features.n_envs is not None and config.features.n_envs < 1:
        raise UserError(f"features.n_envs={config.features.n_envs}: give the number of envs per τ to read (>= 1), or "
                        "drop it to read the whole batch")
    warmup_phases(config.features.warmup)
    counts = {"augment_starts": config.augment_starts, "relabel_rounds": config.relabel_rounds}
    sizes = {"relabel_tasks": config.relabel_tasks, "relabel_applications": config.relabel_applications,
             "relabel_starts": config.relabel_starts, "relabel_eval_episodes": config.relabel_eval_episodes}
    bad = [f"{k}={v}" for k, v in counts.items() if v < 0] + [f"{k}={v}" for k, v in sizes.items() if v < 1]
    if bad or config.augment_noise < 0:
        raise UserError(f"invalid {', '.join(bad) or f'augment_noise={config.augment_noise}'}: counts must be >= 0, "
                        "relabel sizes >= 1 and augment_noise >= 0")


class _Trainer:
    """One training run: the pairs so far, the operator, its checkpoint file and the per-epoch metrics."""

    def __init__(self, config: TrainConfig, pairs: Pairs, train_tasks: set[str], val_tasks: set[str]) -> None:
        self.config, self.pairs, self.train_tasks, self.val_tasks = config, pairs, train_tasks, val_tasks
        task_dim = pairs.items["task"].shape[-1] if config.features.task_input else 0
        if config.features.task_input and not task_dim:
            raise UserError(f"features.task_input=true, but family {pairs.task_family} randomizes nothing: there is "
                            "no task vector to give the operator")
        # The ask range comes from the source pairs only: relabeled pairs must not move apply's default ask.
        self.checkpoint = OperatorCheckpoint.from_training(config.features, config.operator, pairs.spec,
                                                           config.pairs.ks, pairs.ask[pairs.select(train_tasks)],
                                                           sorted(train_tasks), pairs.teacher, pairs.task_family,
                                                           task_dim, config.ask_k or default_ask_k(config.pairs.ks))
        BatchSchedule.of(self.checkpoint)  # the warm-up's widths must suit the teacher before anything is fitted
        self.op = self.checkpoint.new_operator()
        self.out = Path(config.out)
        self.path = self.out / "operator.safetensors"
        self.rows: list[dict[str, float]] = []

    def add(self, extra: Pairs) -> None:
        """Add pairs (of training tasks) to the training set."""
        self.pairs = concat_pairs([self.pairs, extra])

    def fit(self, round_: int) -> dict[str, float]:
        """Fit from the current weights; leaves the best weights in ``op`` (also saved to ``operator.safetensors``
        and ``operator_round<r>.safetensors`` when relabeling) and returns the best epoch's metrics."""
        train_idx, val_idx = self.pairs.select(self.train_tasks), self.pairs.select(self.val_tasks)
        best: dict[str, Any] = {}

        def save(epoch: int, loss: float, identity: float) -> None:
            best["summary"] = {"best_epoch": epoch, "val_loss": loss, "val_identity_loss": identity,
                               "train_tasks": len(self.train_tasks), "val_tasks": len(self.val_tasks),
                               "train_pairs": len(train_idx), "relabel_round": round_}
            best["state"] = copy.deepcopy(self.op.state_dict())
            self.checkpoint.save(self.path, self.op, summary=best["summary"])

        rows = [{"round": round_, **row} for row in fit(self.op, self.pairs, train_idx, val_idx, self.config, save)]
        if "state" not in best:
            raise UserError(f"training diverged: the loss was never finite (round {round_}); lower lr= or check "
                            "the dataset for blown-up runs")
        self.rows += rows
        atomic_write_csv(self.out / "metrics.csv", list(self.rows[0]), self.rows)
        self.op.load_state_dict(best["state"])
        if self.config.relabel_rounds:
            self.checkpoint.save(self.out / f"operator_round{round_}.safetensors", self.op, summary=best["summary"])
        return rows[best["summary"]["best_epoch"]]


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _relabel(trainer: _Trainer, datasets: list[str], best: dict[str, float]) -> None:
    """Relabeling rounds after the first fit; one row per round to ``relabel.csv`` (round 0: no relabeled pairs)."""
    config, pairs = trainer.config, trainer.pairs
    ask = trainer.checkpoint.ask(config.relabel_ask_k)
    runs = {name: dataset_runs(datasets, tasks) for name, tasks in
            (("train", trainer.train_tasks), ("val", trainer.val_tasks))}
    rng = np.random.default_rng(config.seed)
    # The same tasks and initial policies every round, so that the rounds' returns compare; what changes
    # between rounds is the operator, and with it the policies it visits.
    starts = {}
    for name, candidates in runs.items():
        pick = sorted(rng.choice(len(candidates), min(config.relabel_tasks, len(candidates)), replace=False))
        starts[name] = initial_starts([candidates[i] for i in pick], pairs.spec, seed=config.seed)
    rows: list[dict[str, float]] = []
    added, teacher_steps, visits = 0, 0, []
    batch = math.prod(pairs.batch_shape)
    clock = time.perf_counter()
    for round_ in range(config.relabel_rounds + 1):
        if round_:
            chosen = sorted(rng.choice(len(visits), min(config.relabel_starts, len(visits)), replace=False))
            extra, teacher_steps = teacher_pairs([visits[i] for i in chosen], pairs.teacher, config.pairs,
                                                 config.features, trainer.out / "relabel", f"round{round_}",
                                                 torch.Generator().manual_seed(config.pairs.seed + round_))
            added = len(extra.source)
            print(f"relabel round {round_}: {added} pairs from {len(chosen)} visited policies "
                  f"({teacher_steps} teacher env steps)", flush=True)
            trainer.add(extra)
            best = trainer.fit(round_)
        returns = {name: operator_visits(trainer.op, trainer.checkpoint, s, config.relabel_applications, ask,
                                         config.relabel_eval_episodes) for name, s in starts.items()}
        visits = returns["train"][0]
        rows.append({"round": round_, "pairs_added": added, "teacher_env_steps": teacher_steps,
                     # operator rollouts on training and validation tasks (evaluation episodes not counted)
                     "operator_env_steps": sum(len(r[1]) for r in returns.values()) * batch,
                     "train_loss": best["train_loss"], "val_loss": best["val_loss"],
                     "val_identity_loss": best["val_identity_loss"],
                     # the loss weights (normalize_by_k) change with the training pairs: compare this ratio
                     "val_loss_over_identity": best["val_loss"] / best["val_identity_loss"],
                     **{f"{name}_return": _mean(r[1]) for name, r in returns.items()},
                     **{f"{name}_final_return": _mean(r[2]) for name, r in returns.items()},
                     "seconds": time.perf_counter() - clock})
        atomic_write_csv(trainer.out / "relabel.csv", list(rows[0]), rows)
        clock = time.perf_counter()


def train(config: TrainConfig) -> Path:
    """Fit an operator to ``config.dataset`` (one dataset or the union of several); writes ``operator.safetensors``
    (+ JSON) and ``metrics.csv`` to ``config.out`` and returns the checkpoint path. With ``augment_starts``, adds
    teacher pairs from perturbed dataset policies first; with ``relabel_rounds``, relabels and retrains after
    the fit (``relabel.csv``, ``operator_round<r>.safetensors``, the teacher runs under ``relabel/``)."""
    _check(config)
    torch.manual_seed(config.seed)
    datasets = dataset_dirs(config.dataset)
    config = dataclasses.replace(config, features=resolve_features(datasets, config.features))
    print(f"encoding hindsight pairs from {', '.join(datasets)} ...", flush=True)
    pairs = build_union(datasets, config.pairs, config.features)
    train_tasks, val_tasks = split_tasks(pairs, config.pairs.val_fraction, config.pairs.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = _Trainer(config, pairs, train_tasks, val_tasks)
    if config.augment_starts:
        starts = perturbed_starts(dataset_runs(datasets, train_tasks), config.augment_starts, config.augment_noise,
                                  config.seed)
        extra, steps = teacher_pairs(starts, pairs.teacher, config.pairs, config.features, out / "augment", "augment",
                                     torch.Generator().manual_seed(config.pairs.seed))
        print(f"augmentation: {len(extra.source)} pairs from {len(starts)} perturbed policies "
              f"({steps} teacher env steps)", flush=True)
        trainer.add(extra)
    print(f"{len(trainer.pairs.select(train_tasks))} training pairs from {len(train_tasks)} tasks, "
          f"{len(trainer.pairs.select(val_tasks))} validation pairs from {len(val_tasks)} tasks", flush=True)
    best = trainer.fit(0)
    print(f"best epoch {best['epoch']}: validation loss {best['val_loss']:.4f} "
          f"(θ'=θ scores {best['val_identity_loss']:.4f}); "
          f"checkpoint {trainer.path}", flush=True)
    if config.relabel_rounds:
        _relabel(trainer, datasets, best)
    return trainer.path
