"""What the settled studies share: training an operator variant and measuring it on validation and held-out tasks.

Every variant is applied on the same tasks from the same fresh starts with the same budget B in env steps (so
operators of teachers with other batch sizes get the same experience), and scored by the IQM of its runs'
returns at B with a 95% stratified-bootstrap CI. Two sets of tasks: the held-out ``test`` tasks, and validation
tasks, ``train`` tasks 32 onwards, which no collection of 32 tasks contains. Settings are chosen on the
validation tasks, never on the test tasks.

Also here: the ablation's rows (:class:`Variant`, :func:`collection_variants`), which ``ablations.py`` measures and
``confirm_choice.py`` re-measures, and one teacher run's return at B (:func:`final_return`), which
``update_rules.py`` and ``privileged_targets.py`` score. The figures' format and the shipped settings come from
``benchmarks/common.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from metaimprove import seeds
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.methods import teacher_steps
from metaimprove.evaluation.plot import read_curves
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.evaluation.stats import Band, Estimate, common_grid, curve_band, iqm_ci
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.networks import OperatorConfig
from metaimprove.operator.runtime import describe_warmup
from metaimprove.sim.envs import AnyTask
from metaimprove.sim.rollout import evaluate
from metaimprove.sim.tasks import TaskConfig, get_family
from metaimprove.teachers import ARS, make_teacher
from metaimprove.training.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # benchmarks/common.py
from common import ASK_K, BUDGET, DATASET, OPERATORS, finals, fmt

PEERS = ["ppo", "ars", "no_update"]
"""the methods every variant is compared with: they depend on neither the operator nor the ask, so run once"""
VALIDATION_START = 32
"""validation tasks: ``train`` tasks from this index on, outside every 32-task collection"""


def peer_columns(estimates: dict[str, Estimate], prefix: str = "") -> dict[str, str]:
    """The :data:`PEERS`' columns of a benchmark CSV, ``<prefix>ppo_at_B``, ``<prefix>ars_at_B`` and
    ``<prefix>start_at_B``: each one's IQM return at B [95% CI] from ``estimates`` (method -> estimate)."""
    return {f"{prefix}{'start' if m == 'no_update' else m}_at_B": fmt(estimates[m]) for m in PEERS}


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


# ------------------------------------------------------------------- the ablation's rows

AUGMENT_STARTS = 16
"""the augmentation row's noise-perturbed start policies"""
PPO_OPERATOR = OPERATORS / "halfcheetah_vel.ppo.safetensors"
"""the per-parameter operator trained on PPO's pairs (the teacher=ppo row)"""
WARMUP_ASK_K = 1
"""the jump the warm-up rows ask the half-width operator for: its best on the validation tasks (``features.envs=<half>
ask_k=1``)"""
PPO_ASK_K = 1
"""the jump size chosen for the PPO-fitted operator on the validation tasks (val IQM at B: k = 1 -106.0, 2 -112.4,
4 -118.9, 8 -136.5; its checkpoint records it)"""


@dataclass(frozen=True)
class Variant:
    """One row: how its operator differs from the baseline's."""

    name: str
    changed: str
    """what changed against the baseline, in words"""
    train: dict[str, Any] | None = field(default_factory=dict)
    """TrainConfig settings that differ from the baseline's; None: an operator not trained here"""
    ask_k: int | None = None
    """the jump size it is asked for when applied, if not the baseline's"""
    checkpoint: Path | None = None
    """with ``train`` None: the operator's checkpoint, if not one trained here"""
    reuses: str = "per_param"
    """with ``train`` and ``checkpoint`` None: the variant whose trained operator it applies"""
    warmup: list[list[int]] | None = None
    """the warm-up it is applied with (``ApplyConfig.warmup``), if not its checkpoint's"""


def variants(ask_k: int, augment_starts: int, ppo_operator: Path, teacher_envs: int,
             teacher_steps: int) -> list[Variant]:
    """The ablation rows, baseline first (``teacher_envs`` × ``teacher_steps``: the envs and steps per env of one batch
    of the collection's teacher)."""
    half = teacher_envs // 2
    return [
        Variant("per_param", f"baseline: the default training settings, asked for k = {ask_k}"),
        Variant("teacher=ppo", f"fitted to PPO's pairs (32 tasks × 48 updates) instead of ARS's, asked for k = "
                f"{PPO_ASK_K}", None, PPO_ASK_K, ppo_operator),
        Variant("es_gradient=false", "features.es_gradient=false (no ES step from τ's perturbations)",
                {"features": FeatureConfig(es_gradient=False)}),
        Variant("flat", "operator.arch=flat (one MLP over the whole θ)", {"operator": OperatorConfig(arch="flat")}),
        Variant("relabel_rounds=1", f"one relabeling round (its rollouts asked for k = {ask_k})",
                {"relabel_rounds": 1}),
        Variant(f"augment_starts={augment_starts} augment_noise=0.1",
                f"teacher pairs from {augment_starts} noise-perturbed dataset policies",
                {"augment_starts": augment_starts, "augment_noise": 0.1}),
        Variant("task_input", "features.task_input=true (the oracle: told the task instead of inferring it)",
                {"features": FeatureConfig(task_input=True)}),
        Variant(f"features.envs={half}", f"the operator reads {half} of the teacher's {teacher_envs} envs per τ and "
                f"collects {half}-env batches", {"features": FeatureConfig(n_envs=half)}),
        *(Variant(f"{prefix}ask_k={k}", f"the {what} operator (not retrained) asked for k = {k}", None, k,
                  reuses=reused)
          for prefix, what, reused in (("", "baseline", "per_param"),
                                       (f"features.envs={half} ", f"features.envs={half}", f"features.envs={half}"))
          for k in (1, 2, 4, 8) if k != ask_k),
        *(Variant(f"features.envs={half} ask_k={WARMUP_ASK_K} warmup={_compact(warmup)}",
                  f"the features.envs={half} operator (not retrained) asked for k = {WARMUP_ASK_K}, collecting "
                  f"{describe_warmup(warmup)}",
                  None, WARMUP_ASK_K, reuses=f"features.envs={half}", warmup=warmup)
          for warmup in _warmups(half, teacher_steps)),
    ]


def _warmups(half: int, n_steps: int) -> list[list[list[int]]]:
    """The warm-ups tried on the half-width operator: a quarter or a half of its width for the first 2 to 8 of its
    batches, or a quarter then a half."""
    batch = half * n_steps
    quarter = half // 8 * 2  # whole antithetic pairs
    return [[[quarter, 2 * batch]], [[half // 2, 2 * batch]], [[half // 2, 4 * batch]], [[half // 2, 8 * batch]],
            [[quarter, 2 * batch], [half // 2, 4 * batch]]]


def _compact(warmup: list[list[int]]) -> str:
    return str(warmup).replace(" ", "")


def collection_variants(dataset: Path, ask_k: int, augment_starts: int = AUGMENT_STARTS,
                        ppo_operator: Path = PPO_OPERATOR) -> list[Variant]:
    """The ablation rows (:func:`variants`) for the collection at ``dataset``, whose teacher's batch width sets the
    half-width row."""
    collection = yaml.safe_load((dataset / "config.yaml").read_text())
    teacher = make_teacher({"name": collection["teacher_name"], "config": collection["teacher"]})
    return variants(ask_k, augment_starts, ppo_operator, *teacher.batch_shape)


# ------------------------------------------------------------------ one teacher run at B

EVAL_EPISODES = 8
"""apply's default evaluation: the mean of 8 deterministic episodes"""


def tasks(split: str, n: int) -> list[AnyTask]:
    """``n`` tasks of ``split``: ``val`` is ``train`` tasks from :data:`VALIDATION_START` on."""
    family = get_family("halfcheetah_vel")
    return family.tasks("train", n, start=VALIDATION_START) if split == "val" else family.tasks(split, n)


def final_return(teacher: ARS, ckpt: OperatorCheckpoint, split: str, task_index: int, seed: int,
                 budget: int) -> float:
    """The return (apply's evaluation) after ``teacher``'s updates within ``budget`` env steps from run ``seed``'s
    fresh start (``ckpt``'s policy) on task ``task_index`` of ``split``."""
    torch.set_num_threads(1)
    task = tasks(split, task_index + 1)[task_index]
    *_, last = teacher_steps(teacher, task, ckpt.fresh_policy(seed), seed, budget, [])
    return evaluate(last.policy, task, EVAL_EPISODES, seed=seeds.evaluation(seed))
