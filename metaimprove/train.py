"""Supervised training of the improvement operator on hindsight pairs.

The loss is behavioural (function-space): the KL divergence from the predicted θ' 's action
distribution to the target policy θⁿ⁺ᵏ's, on states of τⁿ and τⁿ⁺ᵏ — weight symmetries make plain parameter
regression a weak signal — plus an optional small parameter-space term. Validation holds out whole
tasks; training stops early when the validation loss stops improving and keeps the best checkpoint.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from metaimprove.dataset import PairConfig, Pairs, build_pairs, split_tasks
from metaimprove.errors import UserError
from metaimprove.features import FeatureConfig
from metaimprove.operator import ImprovementOperator, OperatorCheckpoint, OperatorConfig
from metaimprove.policy import PolicySpec, forward


@dataclass
class TrainConfig:
    """Fit the improvement operator to a collected dataset (hindsight pairs, behavioural loss)."""

    dataset: str = "???"
    """directory written by `metaimprove collect`"""
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


def behavioural_loss(spec: PolicySpec, theta: torch.Tensor, target: torch.Tensor, states: torch.Tensor,
                     mean_weight: float = 1.0, std_weight: float = 1.0) -> torch.Tensor:
    """Mean KL(π_θ ‖ π_target) per pair ``[B]`` on normalized ``states [B, S, obs]`` (zero iff same actions).

    It splits into a mean part (mean − t_mean)² / 2σ_target² and a log-std part; the weights scale each.
    This direction divides the mean error by the *target's* variance: the other, KL(π_target ‖ π_θ),
    divides by the prediction's, so an operator can lower it by inflating its own log-std, which it
    then does step after step when applied (the action noise and the control cost blow up).
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


def train(config: TrainConfig) -> Path:
    """Fit an operator to ``config.dataset``; writes ``operator.safetensors`` (+ JSON) and ``metrics.csv`` to
    ``config.out`` and returns the checkpoint path."""
    if config.batch_size < 1 or config.max_epochs < 1 or config.lr <= 0:
        raise UserError("batch_size and max_epochs must be >= 1 and lr > 0")
    if not config.pairs.ks or any(k < 1 for k in config.pairs.ks):
        raise UserError(f"pairs.ks must be a non-empty list of jumps >= 1, got {config.pairs.ks}")
    torch.manual_seed(config.seed)
    print(f"encoding hindsight pairs from {config.dataset} ...", flush=True)
    pairs = build_pairs(config.dataset, config.pairs, config.features)
    train_tasks, val_tasks = split_tasks(pairs, config.pairs.val_fraction, config.pairs.seed)
    train_idx, val_idx = pairs.select(train_tasks), pairs.select(val_tasks)
    print(f"{len(train_idx)} training pairs from {len(train_tasks)} tasks, "
          f"{len(val_idx)} validation pairs from {len(val_tasks)} tasks", flush=True)
    op = ImprovementOperator(pairs.spec, config.operator)
    checkpoint = OperatorCheckpoint.from_training(config.features, config.operator, pairs.spec,
                                                   config.pairs.ks, pairs.ask[train_idx], sorted(train_tasks),
                                                   pairs.teacher)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "operator.safetensors"

    def save(epoch: int, loss: float, identity: float) -> None:
        checkpoint.save(path, op, summary={"best_epoch": epoch, "val_loss": loss, "val_identity_loss": identity,
                                           "train_tasks": len(train_tasks), "val_tasks": len(val_tasks)})

    rows = fit(op, pairs, train_idx, val_idx, config, save)
    tmp = out / "metrics.csv.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "metrics.csv")
    best = min(rows, key=lambda r: r["val_loss"] if len(val_idx) else r["train_loss"])
    print(f"best epoch {best['epoch']}: validation loss {best['val_loss']:.4f} "
          f"(θ'=θ scores {best['val_identity_loss']:.4f}); "
          f"checkpoint {path}", flush=True)
    return path
