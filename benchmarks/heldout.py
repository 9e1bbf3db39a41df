"""Train an operator variant and measure it on held-out tasks: shared by ``scaling.py`` and ``ablations.py``.

Every variant is applied on the same tasks from the same fresh starts with the same budget B in env steps (so
operators of teachers with other batch sizes get the same experience), and scored by the IQM of its runs'
returns at B with a 95% stratified-bootstrap CI. Two sets of tasks: the held-out ``test`` tasks, and validation
tasks, ``train`` tasks 32 onwards, which no collection of 32 tasks contains. Settings are chosen on the
validation tasks, never on the test tasks.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from improvement import ASK_K, BUDGET, DATASET, finals, fmt

from metaimprove.evaluation.apply import ApplyConfig, apply
from metaimprove.evaluation.plot import read_curves
from metaimprove.evaluation.stats import Band, Estimate, common_grid, curve_band, iqm_ci
from metaimprove.sim.tasks import TaskConfig
from metaimprove.training.train import TrainConfig, train

PEERS = ["ppo", "ars", "no_update"]
"""the methods every variant is compared with: they depend on neither the operator nor the ask, so run once"""


def peer_columns(estimates: dict[str, Estimate], prefix: str = "") -> dict[str, str]:
    """The :data:`PEERS`' columns of a benchmark CSV, ``<prefix>ppo_at_B``, ``<prefix>ars_at_B`` and
    ``<prefix>start_at_B``: each one's IQM return at B [95% CI] from ``estimates`` (method -> estimate)."""
    return {f"{prefix}{'start' if m == 'no_update' else m}_at_B": fmt(estimates[m]) for m in PEERS}
VALIDATION_START = 32
"""validation tasks: ``train`` tasks from this index on, outside every 32-task collection"""


def add_arguments(parser: argparse.ArgumentParser, dataset: bool = True, ask: bool = True) -> None:
    """The options every held-out comparison shares: the collection trained on (unless ``dataset`` is False), the
    jump operators are asked for (unless ``ask`` is False) and the runs applied."""
    if dataset:
        parser.add_argument("--dataset", default=str(DATASET),
                            help="the collection operators are trained on (see benchmarks/improvement.py's docstring)")
    parser.add_argument("--tasks", type=int, default=4, help="held-out test tasks (and validation tasks)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per task")
    parser.add_argument("--budget", type=int, default=BUDGET, help="budget B in env steps per run")
    if ask:
        parser.add_argument("--ask-k", type=int, default=ASK_K, help="jump size the operators are asked for")
    parser.add_argument("--workers", type=int, default=1, help="parallel apply processes (results do not depend on it)")


def apply_settings(args: argparse.Namespace, split: str = "test") -> dict[str, Any]:
    """The :class:`ApplyConfig` settings of the runs the options describe on ``split`` (``test``, or ``val``:
    the validation tasks), operator and methods aside."""
    where = {"split": "train", "task_start": VALIDATION_START} if split == "val" else {"split": split}
    return dict(task=TaskConfig("halfcheetah_vel"), n_tasks=args.tasks, seeds=args.seeds, budget=args.budget,
                ask_k=args.ask_k, workers=args.workers, **where)


def fit(config: TrainConfig) -> Path:
    """Train an operator as ``metaimprove train`` does, on one intra-op thread (the CLI's setting): float reductions
    depend on the thread count, so only then do the same settings here and on the command line give the same
    weights bit for bit."""
    torch.set_num_threads(1)
    return train(config)


def timed_train(config: TrainConfig) -> tuple[Path, float]:
    """Train an operator (:func:`fit`); its checkpoint and the wall minutes training took."""
    began = time.perf_counter()
    checkpoint = fit(config)
    return checkpoint, (time.perf_counter() - began) / 60


def at_budget(checkpoint: Path, out: Path, methods: list[str], settings: dict[str, Any]) -> tuple[dict[str, Estimate],
                                                                                                 float]:
    """Apply ``methods`` with the operator at ``checkpoint`` (``settings``: :func:`apply_settings`, possibly changed)
    into ``out``; each method's IQM return at B [95% CI], and B in env steps."""
    budget = float(settings["budget"])
    apply(ApplyConfig(operator_path=str(checkpoint), out=str(out), methods=methods, **settings))
    curves = read_curves([out / "curves.csv"])
    return {m: iqm_ci(finals(curves.where(method=m), budget)) for m in methods}, budget


def band(out: Path, method: str) -> Band:
    """The IQM curve, with its 95% CI band, of ``method``'s runs applied into ``out`` by :func:`at_budget`: what
    ``steps_ratio_to_ppo`` is read from (:func:`metaimprove.evaluation.stats.reach_ratio`)."""
    curves = read_curves([out / "curves.csv"]).where(method=method)
    return curve_band(curves, common_grid(curves))
