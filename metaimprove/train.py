"""Supervised training of the improvement operator on hindsight pairs.

The loss is behavioural (function-space): the KL divergence from the target policy θⁿ⁺ᵏ's action
distribution to the predicted θ' 's, on states of τⁿ and τⁿ⁺ᵏ — weight symmetries make plain parameter
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
    """Training of the operator."""

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
    seed: int = 0
    """seeds initialization and batching"""


def behavioural_loss(spec: PolicySpec, theta: torch.Tensor, target: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Mean KL(π_target ‖ π_θ) per pair ``[B]`` on normalized ``states [B, S, obs]`` (zero iff same actions)."""
    mean, log_std = forward(spec, theta, states)
    t_mean, t_log_std = forward(spec, target, states)
    var_ratio_num = torch.exp(2 * t_log_std) + (t_mean - mean).square()
    kl = log_std - t_log_std + var_ratio_num / (2 * torch.exp(2 * log_std)) - 0.5
    return kl.sum(-1).mean(-1)


def _loss(op: ImprovementOperator, pairs: Pairs, index: torch.Tensor, param_weight: float) -> torch.Tensor:
    feats, ask, target, states = pairs.batch(index)
    theta = op(feats, ask)
    loss = behavioural_loss(pairs.spec, theta, target, states)
    if param_weight:
        loss = loss + param_weight * (theta - target).square().mean(-1)
    return loss


def _evaluate(op: ImprovementOperator, pairs: Pairs, index: torch.Tensor, param_weight: float,
              batch_size: int) -> float:
    if len(index) == 0:
        return math.nan
    with torch.no_grad():
        total = sum(float(_loss(op, pairs, chunk, param_weight).sum()) for chunk in index.split(batch_size * 4))
    return total / len(index)


def _identity_loss(pairs: Pairs, index: torch.Tensor) -> float:
    """Validation loss of θ' = θ: the bar an operator must clear to have learned anything."""
    if len(index) == 0:
        return math.nan
    feats, _, target, states = pairs.batch(index)
    with torch.no_grad():
        return float(behavioural_loss(pairs.spec, feats["theta"], target, states).mean())


def fit(op: ImprovementOperator, pairs: Pairs, train_idx: torch.Tensor, val_idx: torch.Tensor,
        config: TrainConfig, on_best: Callable[[int, float], None] | None = None) -> list[dict[str, float]]:
    """Train ``op`` on ``train_idx`` pairs with early stopping on the ``val_idx`` loss (the training loss if there
    is no validation set). Calls ``on_best(epoch, val_loss)`` at each improvement; returns per-epoch metrics."""
    opt = torch.optim.AdamW(op.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    identity = _identity_loss(pairs, val_idx if len(val_idx) else train_idx)
    best, best_epoch, rows = math.inf, -1, []
    start = time.perf_counter()
    bar = tqdm(range(config.max_epochs), desc="train", unit="epoch", dynamic_ncols=True, disable=None)
    for epoch in bar:
        op.train()
        losses = []
        for index in train_idx[torch.randperm(len(train_idx), generator=generator)].split(config.batch_size):
            loss = _loss(op, pairs, index, config.param_loss_weight).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(op.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
        op.eval()
        train_loss = sum(losses) / len(losses)
        val = _evaluate(op, pairs, val_idx, config.param_loss_weight, config.batch_size)
        monitored = val if len(val_idx) else train_loss
        rows.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val, "val_identity_loss": identity,
                     "seconds": time.perf_counter() - start})
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val:.4f}", identity=f"{identity:.4f}")
        if monitored < best:
            best, best_epoch = monitored, epoch
            if on_best is not None:
                on_best(epoch, monitored)
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
    identity = _identity_loss(pairs, val_idx if len(val_idx) else train_idx)

    def save(epoch: int, loss: float) -> None:
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
    print(f"best epoch {best['epoch']}: validation loss {best['val_loss']:.4f} (θ'=θ scores {identity:.4f}); "
          f"checkpoint {path}", flush=True)
    return path
