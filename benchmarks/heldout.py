"""Train an operator variant and measure it on held-out tasks: shared by ``scaling.py`` and ``ablations.py``.

Every variant is applied on the same held-out ``test`` tasks from the same fresh starts with the same budget B
(``applications`` batches of the operator's teacher), and scored by the IQM of its runs' returns at
B with a 95% stratified-bootstrap CI. The ask (k = 4) is the one chosen for the shipped operator on validation
tasks (``benchmarks/improvement.py``), never on the test tasks.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from improvement import finals

from metaimprove.apply import ApplyConfig, apply, operator_batch
from metaimprove.operator import OperatorCheckpoint
from metaimprove.plot import read_curves
from metaimprove.stats import Estimate, iqm_ci
from metaimprove.tasks import TaskConfig
from metaimprove.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every held-out comparison shares: the collection trained on and the runs applied."""
    parser.add_argument("--dataset", default=str(ROOT / "runs" / "vel32x48"),
                        help="the collection operators are trained on (see benchmarks/improvement.py's docstring)")
    parser.add_argument("--tasks", type=int, default=4, help="held-out test tasks")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per test task")
    parser.add_argument("--applications", type=int, default=30, help="budget B in operator batches")
    parser.add_argument("--ask-k", type=int, default=4, help="jump size the operators are asked for")
    parser.add_argument("--workers", type=int, default=1, help="parallel apply processes (results do not depend on it)")


def apply_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`ApplyConfig` settings of the held-out runs the options describe (operator and methods aside)."""
    return dict(task=TaskConfig("halfcheetah_vel"), split="test", n_tasks=args.tasks, seeds=args.seeds,
                applications=args.applications, ask_k=args.ask_k, workers=args.workers)


def timed_train(config: TrainConfig) -> tuple[Path, float]:
    """Train an operator; its checkpoint and the wall minutes training took."""
    began = time.perf_counter()
    checkpoint = train(config)
    return checkpoint, (time.perf_counter() - began) / 60


def at_budget(checkpoint: Path, out: Path, methods: list[str], settings: dict[str, Any]) -> tuple[dict[str, Estimate],
                                                                                                 float]:
    """Apply ``methods`` with the operator at ``checkpoint`` (``settings``: :func:`apply_settings`, possibly changed)
    into ``out``; each method's IQM return at B [95% CI], and B in env steps."""
    _, ckpt = OperatorCheckpoint.load(checkpoint)
    budget = float(settings["applications"] * math.prod(operator_batch(ckpt)))
    apply(ApplyConfig(operator_path=str(checkpoint), out=str(out), methods=methods, **settings))
    curves = read_curves([out / "curves.csv"])
    return {m: iqm_ci(finals(curves.where(method=m), budget)) for m in methods}, budget
