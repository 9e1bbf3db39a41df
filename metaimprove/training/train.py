"""The ``train`` stage: supervised fit of the improvement operator to hindsight pairs with a behavioural loss and
early stopping on validation tasks, with optional augmentation and relabeling rounds.

Why: see the design notes (docs/design.md, "Behavioural loss" and "Relabeling and augmentation").
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaimprove.errors import UserError
from metaimprove.loggers import CsvTable, Metrics, check_logger, progress, run_log
from metaimprove.operator.checkpoint import OperatorCheckpoint, default_ask_k
from metaimprove.operator.features import FeatureConfig, check_features, warmup_phases
from metaimprove.operator.networks import ImprovementOperator, OperatorConfig
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.sim.policy import PolicySpec, forward
from metaimprove.storage import (
    atomic_write_csv,
    differences,
    exclusive,
    load_tensors,
    meta_path,
    plain_json,
    read_json,
    save_tensors,
)
from metaimprove.training.pairs import (
    PairConfig,
    PairGroups,
    Pairs,
    build_groups,
    dataset_dirs,
    resolve_features,
    split_tasks,
)
from metaimprove.training.relabel import dataset_runs, initial_starts, operator_visits, perturbed_starts, teacher_pairs

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda", "auto")
LAST = "last.safetensors"
"""the fit's state after its last finished epoch (with ``last.json``), what a rerun into the same out resumes from"""
STATE_FORMAT = "metaimprove-train-state"
STATE_VERSION = 1
ROW_FIELDS = ("epoch", "train_loss", "val_loss", "val_identity_loss", "seconds")
"""the columns of :func:`fit`'s per-epoch metrics; ``metrics.csv`` adds the relabel round in front"""
# Settings that decide where a fit runs and what it reports, never what it computes: a resumed fit may change them.
EXECUTION_SETTINGS = ("out", "logger", "device")
LATER_SETTINGS = {("features", "agnostic"): False, ("pairs", "targets"): "next",
                  ("pairs", "weight_by_improvement"): False, ("operator", "memory"): 0}
"""settings added after training states were first saved, with their defaults: left out of a state's settings at
those defaults, so that a state saved before one existed still resumes"""


@dataclass
class TrainConfig:
    """Fit the improvement operator to a collected dataset (hindsight pairs, behavioural loss)."""

    dataset: Any = "???"
    """directory written by `metaimprove collect`, or several for their union: dataset=[DIR_A,DIR_B] or 'DIR_A,DIR_B'
    (of several robots with features.agnostic=true)"""
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
    device: str = "cpu"
    """where the fit runs: cpu (bit-for-bit reproducible), cuda, or auto (cuda when one is visible, else cpu)"""
    logger: str = "csv"
    """where the losses go besides metrics.csv: csv (nowhere more), tensorboard or wandb"""


@dataclass
class FitState:
    """Where a fit stands after an epoch: everything a resumed fit needs to go on as if it had never stopped."""

    epochs: int
    """epochs done"""
    done: bool
    """whether the fit is over (early stopping or max_epochs)"""
    rows: list[dict[str, float]]
    """per-epoch metrics so far (:data:`ROW_FIELDS`)"""
    best: float
    """the best monitored loss so far"""
    best_epoch: int
    """its epoch (-1: none yet)"""
    optimizer: dict[str, Any]
    """the optimizer's ``state_dict()`` (a resumed fit reads its ``state``; the settings come from the config)"""
    generator: torch.Tensor
    """the state of the generator that orders the training pairs"""


def resolve_device(device: str) -> torch.device:
    """The torch device of ``device=`` (cpu, cuda or auto); a one-line UserError for cuda without one."""
    if device not in DEVICES:
        raise UserError(f"device must be one of {list(DEVICES)}, got '{device}'")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda, but torch sees no CUDA device (or this torch build has no CUDA); "
                        "use device=cpu or device=auto")
    return torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")


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
    """Per-pair weighted loss of ``pairs``' pairs ``index`` (``pair_weight``: theirs) on the device ``pair_weight``
    lives on (the operator's)."""
    feats, ask, target, states = pairs.batch(index)
    device = pair_weight.device
    feats = {k: v.to(device) for k, v in feats.items()}
    memory = None if op.memory is None else pairs.memory_states(op.memory, index)
    return (_pair_loss(pairs.spec, op(feats, ask.to(device), pairs.spec, memory), target.to(device),
                       states.to(device), config) * pair_weight)


def _evaluate(op: ImprovementOperator, pairs: PairGroups, index: torch.Tensor, config: TrainConfig,
              pair_weight: torch.Tensor) -> float:
    if len(index) == 0:
        return math.nan
    total = 0.0
    with torch.no_grad():
        for group, local, at in pairs.parts(index):
            for chunk, where in zip(local.split(config.batch_size * 4), at.split(config.batch_size * 4), strict=True):
                total += float(_loss(op, group, chunk, config, pair_weight[index[where]]).sum())
    return total / len(index)


def _identity_losses(pairs: PairGroups, index: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Per-pair loss of θ' = θ on ``index`` ``[len(index)]``."""
    out = torch.zeros(len(index))
    with torch.no_grad():
        for group, local, at in pairs.parts(index):
            for chunk, where in zip(local.split(1024), at.split(1024), strict=True):
                feats, _, target, states = group.batch(chunk)
                out[where] = _pair_loss(group.spec, feats["theta"], target, states, config)
    return out


def _batches(pairs: PairGroups, index: torch.Tensor, size: int,
             generator: torch.Generator) -> list[tuple[Pairs, torch.Tensor, torch.Tensor]]:
    """An epoch's batches of the pairs ``index``, each of one group (its θs have one length): ``(group, its own
    indices, the pairs' numbers)``. One group: ``index`` shuffled and split; several: each group's pairs in the
    shuffled order split, and the batches of all groups shuffled together, so that robots alternate at random in
    proportion to their pairs."""
    order = index[torch.randperm(len(index), generator=generator)]
    batches = [(group, local[i:i + size], order[at[i:i + size]])
               for group, local, at in pairs.parts(order) for i in range(0, len(local), size)]
    if len(pairs.groups) == 1:
        return batches
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def grouped(pairs: Pairs | PairGroups) -> PairGroups:
    """``pairs`` as groups by policy spec (one group for :class:`Pairs`)."""
    return PairGroups([pairs]) if isinstance(pairs, Pairs) else pairs


def pair_weights(pairs: Pairs | PairGroups, train_idx: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Per-pair loss weights ``[n_pairs]``: each pair's run weight (ones unless ``pairs.weight_by_improvement``),
    with ``normalize_by_k`` over the mean θ'=θ loss of the pair's k on the training pairs (every k then weighs the
    same however far its targets lie)."""
    pairs = grouped(pairs)
    weight = pairs.weight.clone()
    if not config.normalize_by_k or len(train_idx) == 0:
        return weight
    identity = _identity_losses(pairs, train_idx, config)
    log_k = pairs.ask[:, 0]
    for value in log_k[train_idx].unique():
        scale = identity[log_k[train_idx] == value].mean().clamp_min(1e-8)
        weight[log_k == value] *= 1.0 / float(scale)
    return weight


def _identity_loss(pairs: PairGroups, index: torch.Tensor, config: TrainConfig, pair_weight: torch.Tensor) -> float:
    """Validation loss of θ' = θ: the bar an operator must clear to have learned anything."""
    if len(index) == 0:
        return math.nan
    return float((_identity_losses(pairs, index, config) * pair_weight[index]).mean())


def fit(op: ImprovementOperator, pairs: Pairs | PairGroups, train_idx: torch.Tensor, val_idx: torch.Tensor,
        config: TrainConfig, on_best: Callable[[int, float, float], None] | None = None,
        on_epoch: Callable[[FitState], None] | None = None, resume: FitState | None = None) -> list[dict[str, float]]:
    """Train ``op`` on ``train_idx`` pairs with early stopping on the ``val_idx`` loss (the training loss if there
    is no validation set), on the device ``op`` lives on. Calls ``on_best(epoch, val_loss, identity_loss)`` at each
    improvement (the loss of θ' = θ on the same pairs), then ``on_epoch(state)`` after every epoch; ``resume`` (such
    a state, with ``op`` holding that epoch's weights) continues a fit exactly where it stood. Returns per-epoch
    metrics. ``pairs`` of several policy specs (a shape-agnostic operator's) are fitted in batches of one spec each.
    """
    pairs = grouped(pairs)
    opt = torch.optim.AdamW(op.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    weight = pair_weights(pairs, train_idx, config)
    identity = _identity_loss(pairs, val_idx if len(val_idx) else train_idx, config, weight)
    weight = weight.to(next(op.parameters()).device)
    best, best_epoch, rows, first = math.inf, -1, [], 0
    if resume is not None:
        opt.load_state_dict({**opt.state_dict(), "state": resume.optimizer["state"]})
        generator.set_state(resume.generator)
        best, best_epoch, rows = resume.best, resume.best_epoch, list(resume.rows)
        first = config.max_epochs if resume.done else resume.epochs
    start = time.perf_counter() - (rows[-1]["seconds"] if rows else 0.0)
    bar = progress(iterable=range(first, config.max_epochs), desc="train", unit="epoch")
    for epoch in bar:
        op.train()
        losses = []
        for group, local, index in _batches(pairs, train_idx, config.batch_size, generator):
            loss = _loss(op, group, local, config, weight[index]).mean()
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
        stop = False
        if monitored < best:
            best, best_epoch = monitored, epoch
            if on_best is not None:
                on_best(epoch, monitored, identity)
        else:
            stop = epoch - best_epoch >= config.patience
        if on_epoch is not None:
            on_epoch(FitState(epoch + 1, stop or epoch + 1 == config.max_epochs, rows, best, best_epoch,
                              opt.state_dict(), generator.get_state()))
        if stop:
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
    if config.operator.memory < 0:
        raise UserError(f"operator.memory={config.operator.memory}: give the width of the memory state (>= 1), or 0 "
                        "for an operator without memory")
    warmup_phases(config.features.warmup)
    check_logger(config.logger)
    resolve_device(config.device)
    counts = {"augment_starts": config.augment_starts, "relabel_rounds": config.relabel_rounds}
    sizes = {"relabel_tasks": config.relabel_tasks, "relabel_applications": config.relabel_applications,
             "relabel_starts": config.relabel_starts, "relabel_eval_episodes": config.relabel_eval_episodes}
    bad = [f"{k}={v}" for k, v in counts.items() if v < 0] + [f"{k}={v}" for k, v in sizes.items() if v < 1]
    if bad or config.augment_noise < 0:
        raise UserError(f"invalid {', '.join(bad) or f'augment_noise={config.augment_noise}'}: counts must be >= 0, "
                        "relabel sizes >= 1 and augment_noise >= 0")


class _Trainer:
    """One training run: the pairs so far, the operator, its checkpoint file, the per-epoch metrics and where they
    are reported."""

    def __init__(self, config: TrainConfig, pairs: PairGroups, train_tasks: set[str], val_tasks: set[str]) -> None:
        self.config, self.pairs, self.train_tasks, self.val_tasks = config, pairs, train_tasks, val_tasks
        first = pairs.first
        task_dim = first.items["task"].shape[-1] if config.features.task_input else 0
        if config.features.task_input and not task_dim:
            raise UserError(f"features.task_input=true, but family {first.task_family} randomizes nothing: there is "
                            "no task vector to give the operator")
        # The ask range comes from the source pairs only: relabeled pairs must not move apply's default ask. A
        # shape-agnostic operator records the first dataset's spec: apply's fresh policies take its hidden sizes.
        self.checkpoint = OperatorCheckpoint.from_training(config.features, config.operator, first.spec,
                                                           config.pairs.ks, pairs.ask[pairs.select(train_tasks)],
                                                           sorted(train_tasks), first.teacher, first.task_family,
                                                           task_dim, config.ask_k or default_ask_k(config.pairs.ks))
        BatchSchedule.of(self.checkpoint)  # the warm-up's widths must suit the teacher before anything is fitted
        self.op = self.checkpoint.new_operator()
        self.out = Path(config.out)
        self.path = self.out / "operator.safetensors"
        self.rows: list[dict[str, float]] = []
        self.table = CsvTable(self.out / "metrics.csv", ["round", *ROW_FIELDS])
        self.summary: dict[str, Any] = {}
        """the best epoch's summary of the last fit, as the checkpoint records it"""
        self.metrics: Metrics | None = None
        """where the per-epoch losses are reported besides metrics.csv (once the run directory is taken)"""

    def add(self, extra: Pairs) -> None:
        """Add pairs (of training tasks) to the training set."""
        self.pairs.add(extra)

    def fit(self, round_: int) -> dict[str, float]:
        """Fit from the current weights; leaves the best weights in ``op`` (also saved to ``operator.safetensors``
        and ``operator_round<r>.safetensors`` when relabeling) and returns the best epoch's metrics. Writes
        ``metrics.csv`` a row per epoch; round 0 saves its state each epoch to ``last.safetensors`` and resumes from
        it (relabel rounds start again from round 0's end)."""
        train_idx, val_idx = self.pairs.select(self.train_tasks), self.pairs.select(self.val_tasks)
        best: dict[str, Any] = {}
        last = _LastState(self.out / LAST, self.config) if round_ == 0 else None
        resume = last.load(self.op, best) if last is not None else None
        if resume is not None:
            log.info(f"resuming from {self.out / LAST} after epoch {resume.epochs}"
                     + (" (the fit had finished)" if resume.done else ""))
        self.table.reset(self.rows + [{"round": round_, **row} for row in (resume.rows if resume else [])])

        def save(epoch: int, loss: float, identity: float) -> None:
            best["summary"] = {"best_epoch": epoch, "val_loss": loss, "val_identity_loss": identity,
                               "train_tasks": len(self.train_tasks), "val_tasks": len(self.val_tasks),
                               "train_pairs": len(train_idx), "relabel_round": round_, "complete": False}
            best["state"] = copy.deepcopy(self.op.state_dict())
            self.checkpoint.save(self.path, self.op, summary=best["summary"])

        def epoch_done(state: FitState) -> None:
            row = {"round": round_, **state.rows[-1]}
            # The row first: a state saved without it could not be resumed into a complete metrics.csv.
            self.table.append([row])
            if self.metrics is not None:
                self.metrics.log("train", row, len(self.rows) + len(state.rows) - 1)
            if last is not None:
                last.save(state, self.op, best)

        device = resolve_device(self.config.device)
        self.op.to(device)
        try:
            fitted = fit(self.op, self.pairs, train_idx, val_idx, self.config, save, epoch_done, resume)
        finally:
            self.op.to("cpu")
        rows = [{"round": round_, **row} for row in fitted]
        if "state" not in best:
            raise UserError(f"training diverged: the loss was never finite (round {round_}); lower lr= or check "
                            "the dataset for blown-up runs")
        self.rows += rows
        self.op.load_state_dict(best["state"])
        self.summary = best["summary"]
        if self.config.relabel_rounds:
            # A round's own file holds that round's finished fit.
            self.checkpoint.save(self.out / f"operator_round{round_}.safetensors", self.op,
                                 summary={**best["summary"], "complete": True})
        return rows[best["summary"]["best_epoch"]]

    def finish(self) -> None:
        """Mark the checkpoint complete: a checkpoint without that mark is the best-so-far of an interrupted run."""
        self.checkpoint.save(self.path, self.op, summary={**self.summary, "complete": True})


class _LastState:
    """``last.safetensors`` + ``last.json`` of a training run: the round-0 fit's :class:`FitState`, its current and
    best weights and the settings it runs with (tensors in safetensors, never pickled)."""

    def __init__(self, path: Path, config: TrainConfig) -> None:
        self.path = path
        self.settings = plain_json({k: v for k, v in dataclasses.asdict(config).items()
                                    if k not in EXECUTION_SETTINGS})
        for (section, key), default in LATER_SETTINGS.items():
            if self.settings[section][key] == default:  # unset, as in the states saved before it existed: they resume
                del self.settings[section][key]

    def save(self, state: FitState, op: ImprovementOperator, best: dict[str, Any]) -> None:
        """Write the state after an epoch (atomically)."""
        tensors = {f"operator.{k}": v for k, v in op.state_dict().items()}
        tensors |= {f"best.{k}": v for k, v in best.get("state", {}).items()}
        for index, values in state.optimizer["state"].items():
            tensors |= {f"optimizer.{index}.{k}": v for k, v in values.items()}
        tensors["generator"] = state.generator
        tensors["rows"] = torch.tensor([[row[k] for k in ROW_FIELDS] for row in state.rows], dtype=torch.float64)
        # The best loss as a tensor: JSON has no inf (no best yet) or NaN.
        tensors["best"] = torch.tensor(state.best, dtype=torch.float64)
        meta = {"format": STATE_FORMAT, "format_version": STATE_VERSION, "settings": self.settings,
                "epochs": state.epochs, "done": state.done, "best_epoch": state.best_epoch,
                "best_summary": best.get("summary")}
        save_tensors(self.path, {k: v.detach().cpu() for k, v in tensors.items()}, meta)

    def check(self) -> None:
        """Refuse (one line) a saved state of another format or of a run with other settings; none is fine."""
        if not meta_path(self.path).exists():
            return
        header = read_json(meta_path(self.path))
        meta = header.get("meta") if isinstance(header, dict) else None
        if not (isinstance(meta, dict) and meta.get("format") == STATE_FORMAT
                and meta.get("format_version") == STATE_VERSION):
            raise UserError(f"{self.path} is not a training state this metaimprove reads; remove it to start over")
        changes = [f"{key}: {old!r} there, {new!r} now" for key, old, new in differences(meta["settings"],
                                                                                        self.settings)]
        if changes:
            raise UserError(f"out={self.path.parent} holds a train run with other settings ({'; '.join(changes[:4])});"
                            " rerun with its settings to resume it, or choose another out= directory")

    def load(self, op: ImprovementOperator, best: dict[str, Any]) -> FitState | None:
        """The saved state (None if there is none), with its weights loaded into ``op`` and its best weights and
        summary into ``best``; a one-line UserError if it belongs to a run with other settings."""
        if not self.path.exists():
            return None
        self.check()
        tensors, meta = load_tensors(self.path)
        op.load_state_dict(_prefixed(tensors, "operator."))
        if meta["best_summary"] is not None:
            best["summary"], best["state"] = meta["best_summary"], _prefixed(tensors, "best.")
        optimizer: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in _prefixed(tensors, "optimizer.").items():
            index, key = name.split(".", 1)
            optimizer.setdefault(int(index), {})[key] = value
        rows = [{k: int(v) if k == "epoch" else float(v) for k, v in zip(ROW_FIELDS, row.tolist(), strict=True)}
                for row in tensors["rows"]]
        return FitState(meta["epochs"], meta["done"], rows, float(tensors["best"]), meta["best_epoch"],
                        {"state": optimizer}, tensors["generator"])


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _relabel(trainer: _Trainer, datasets: list[str], best: dict[str, float]) -> None:
    """Relabeling rounds after the first fit; one row per round to ``relabel.csv`` (round 0: no relabeled pairs)."""
    config, pairs = trainer.config, trainer.pairs.first
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
            log.info(f"relabel round {round_}: {added} pairs from {len(chosen)} visited policies "
                     f"({teacher_steps} teacher env steps)")
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
    the fit (``relabel.csv``, ``operator_round<r>.safetensors``, the teacher runs under ``relabel/``).

    The fit saves its state to ``last.safetensors`` after every epoch, and the same command into the same ``out``
    resumes it, to the same weights as a run never stopped. Until the run ends, ``operator.safetensors`` holds the
    best weights so far and its summary says ``"complete": false``. One process at a time writes an ``out``."""
    _check(config)
    check_features(config.features, config.operator.arch)
    torch.manual_seed(config.seed)
    datasets = dataset_dirs(config.dataset)
    config = dataclasses.replace(config, features=resolve_features(datasets, config.features))
    out = Path(config.out)
    _LastState(out / LAST, config).check()  # before anything is read or written
    log.info(f"encoding hindsight pairs from {', '.join(datasets)} ...")
    pairs = build_groups(datasets, config.pairs, config.features)
    if len(pairs.groups) > 1 and (config.augment_starts or config.relabel_rounds):
        raise UserError(f"augment_starts and relabel_rounds run one robot's teacher from its policies, and "
                        f"{', '.join(datasets)} hold {len(pairs.groups)} policy specs; drop them to train across "
                        "robots")
    train_tasks, val_tasks = split_tasks(pairs, config.pairs.val_fraction, config.pairs.seed)
    out.mkdir(parents=True, exist_ok=True)
    trainer = _Trainer(config, pairs, train_tasks, val_tasks)
    with exclusive(out, "train"), run_log(out, "train"), \
            Metrics(out, config.logger, "train", plain_json(dataclasses.asdict(config))) as trainer.metrics:
        if config.augment_starts:
            starts = perturbed_starts(dataset_runs(datasets, train_tasks), config.augment_starts,
                                      config.augment_noise, config.seed)
            extra, steps = teacher_pairs(starts, pairs.first.teacher, config.pairs, config.features, out / "augment",
                                         "augment", torch.Generator().manual_seed(config.pairs.seed))
            log.info(f"augmentation: {len(extra.source)} pairs from {len(starts)} perturbed policies "
                     f"({steps} teacher env steps)")
            trainer.add(extra)
        log.info(f"{len(trainer.pairs.select(train_tasks))} training pairs from {len(train_tasks)} tasks, "
                 f"{len(trainer.pairs.select(val_tasks))} validation pairs from {len(val_tasks)} tasks")
        best = trainer.fit(0)
        log.info(f"best epoch {best['epoch']}: validation loss {best['val_loss']:.4f} "
                 f"(θ'=θ scores {best['val_identity_loss']:.4f}); checkpoint {trainer.path}")
        if config.relabel_rounds:
            _relabel(trainer, datasets, best)
        trainer.finish()
    return trainer.path
