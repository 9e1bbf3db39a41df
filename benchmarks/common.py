"""What the benchmarks share: where their outputs go, the held-out comparison's settings and how its figures read.

Every script in ``benchmarks/`` imports from here and from no other script (``throughput.py`` runs
``operator_step.py`` as a script of its own); the settled studies in ``research/`` import from here too, and from a
benchmark's measurement where they report it (they put ``benchmarks/`` on ``sys.path`` themselves).
"""

from __future__ import annotations

import csv
import dataclasses
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import yaml

from metaimprove import seeds
from metaimprove.data.collect import load_manifest, load_shard
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.methods import teacher_steps
from metaimprove.evaluation.plot import read_curves
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.evaluation.stats import (
    Curves,
    Estimate,
    Interval,
    RunKey,
    TaskScale,
    deployed_until,
    normalize_curves,
    pair,
    paired_difference,
    report_budgets,
    score_ci,
    scores_at,
)
from metaimprove.operator.checkpoint import DEFAULT_ASK_K, OperatorCheckpoint
from metaimprove.operator.runtime import BatchSchedule
from metaimprove.sim.envs import AnyTask
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, fold_normalizer, load_policy
from metaimprove.sim.rollout import evaluate
from metaimprove.sim.tasks import TaskConfig, get_family
from metaimprove.teachers import TEACHERS, Teacher

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
OPERATORS = RESULTS / "operators"
RELIABILITY = RESULTS / "reliability.csv"
"""the reliability figures, one row per figure, appended by every run that measures one"""
RELIABILITY_FIELDS = ["date", "host", "benchmark", "name", "value", "note"]
BUDGET = 61440
"""B in env steps per run: 30 PPO batches, 15 ARS batches"""
DATASET = ROOT / "runs" / "ars32d64s_x48"
"""where the benchmarks look for the shipped operator's training collection (``benchmarks/improvement.py``'s
docstring gives the command that recreates it)"""
ASK_K = DEFAULT_ASK_K
"""the jump size operators trained by the benchmarks are asked for: the package's default, chosen on validation
tasks (``research/ablations.py``); the shipped checkpoint records it"""


# ------------------------------------------------------------------------------------------ figures


def finals(curves: Curves, budget: float) -> np.ndarray:
    """Each run's return at the budget (its last evaluation at or before B), shaped [seeds, tasks].

    A run may end before B with budget to spare but not enough for another batch (a guarded run after its
    verifications); what it deploys at B is its last policy."""
    deployed = scores_at(deployed_until(curves, budget), [budget])[budget]
    runs = curves.runs()
    return np.array([[deployed[t, seed] for seed, _, _ in runs[t]] for t in runs]).T


def fmt(est: Estimate) -> str:
    """``iqm [lo, hi]`` with one decimal."""
    return f"{est.iqm:.1f} [{est.lo:.1f}, {est.hi:.1f}]"


def verdict(a: Estimate, b: Estimate) -> str:
    """``wins`` / ``loses`` when the 95% CIs of a and b do not overlap, else ``ties``."""
    return "wins" if a.lo > b.hi else "loses" if a.hi < b.lo else "ties"


# --------------------------------------------------------------------------------------- collections


def describe_collection(config: dict) -> str:
    """``<n> tasks × <iterations> <TEACHER> updates`` of a collection config (a dataset's ``config.yaml``), with
    ARS's directions × rollout steps: collections of one size from differently shaped ARS teachers differ."""
    name = config["teacher_name"]
    text = f"{config['n_tasks']} tasks × {config['iterations']} {name.upper()} updates"
    if name != "ars":
        return text
    teacher = dataclasses.asdict(TEACHERS[name][0]()) | config.get("teacher", {})
    return f"{text} ({teacher['n_directions']} directions × {teacher['n_steps']} steps)"


def shipped_collection(family: str) -> dict:
    """The collection config of ``family``'s shipped operator, ``results/operators/<family>.collect.yaml``."""
    return yaml.safe_load((OPERATORS / f"{family}.collect.yaml").read_text())


def validation_start(family: str = "halfcheetah_vel") -> int:
    """The first validation task of ``family``: the first ``train`` index after its shipped operator's collection
    (train tasks 0-31 for ``halfcheetah_vel``), so that no shipped collection holds a validation task."""
    config = shipped_collection(family)
    if config["split"] != "train":
        raise SystemExit(f"{family}'s shipped collection holds {config['split']} tasks, not train tasks")
    return int(config["start"]) + int(config["n_tasks"])


def collect_command(family: str = "halfcheetah_vel", out: str = "<dir>") -> str:
    """The ``metaimprove collect`` command that recreates the shipped operator's training data (from its
    collection config, ``results/operators/<family>.collect.yaml``)."""
    config = shipped_collection(family)
    name = config["teacher_name"]
    # Only the teacher settings that differ from its defaults, so the command stays as short as it can be.
    default = dataclasses.asdict(TEACHERS[name][0]())
    changed = "".join(f" teacher.{k}={v}" for k, v in config["teacher"].items() if default.get(k) != v)
    return (f"metaimprove collect teacher={name}{changed} task={family} n_tasks={config['n_tasks']} "
            f"seeds={config['seeds']} iterations={config['iterations']} out={out}")


def family_budget(family: str, operator: Path | None = None) -> int:
    """B of ``family``'s held-out comparisons, in env steps: :data:`BUDGET` for ``halfcheetah_vel``, else its
    pipeline's applications (``tasks/<family>.yaml``) × the batch of ``operator`` (default: the family's shipped one),
    as ``benchmarks/families.py`` applies it."""
    if family == "halfcheetah_vel":
        return BUDGET
    _, ckpt = OperatorCheckpoint.load(OPERATORS / f"{family}.safetensors" if operator is None else operator)
    return get_family(family).pipeline_sizes()["applications"] * BatchSchedule.of(ckpt).batch


EVAL_EPISODES = 8
"""apply's default evaluation episodes"""


def fresh_start_run(teacher: Teacher, ckpt: OperatorCheckpoint, task: AnyTask, seed: int,
                    budget: int) -> tuple[float, float]:
    """``teacher``'s updates within ``budget`` env steps from apply's fresh start of run ``seed`` on ``task`` (one
    that none of ``ckpt``'s training tasks is): the start's return and the last policy's, on apply's evaluation."""
    if task.name in ckpt.tasks:
        raise SystemExit(f"{task.name} is one of the operator's training tasks")
    torch.set_num_threads(1)
    start = ckpt.on(task).fresh_policy(seed)  # a shape-agnostic operator's fresh policies take the task's sizes
    *_, last = teacher_steps(teacher, task, start, seed, budget, [])
    return (evaluate(start, task, EVAL_EPISODES, seed=seeds.evaluation(seed)),
            evaluate(last.policy, task, EVAL_EPISODES, seed=seeds.evaluation(seed)))


REFERENCE_RUNS = RESULTS / "references_runs.csv"
"""each task's long reference runs (``benchmarks/references.py``)"""
REFERENCE_METHODS = ("ars", "ppo_tuned")
"""the methods a task's reference return is the best of"""
REFERENCE_SEEDS = 3
"""the seeds of each reference method per task (0, 1, 2): a task's start and reference returns are their means"""


def reference_table(tasks: list[str], n_seeds: int, runs_file: Path = REFERENCE_RUNS) -> list[dict[str, object]]:
    """Per task of ``tasks``: the mean start return over seeds 0 .. n_seeds - 1 (score 0) and the best reference
    method's mean final return (score 1), from ``runs_file`` (``benchmarks/references.py``'s long runs); exits naming
    the tasks it lacks."""
    runs: list[dict[str, str]] = []
    if runs_file.exists():
        with runs_file.open() as f:
            runs = [r for r in csv.DictReader(f) if int(r["seed"]) < n_seeds]
    have = {(r["task"], r["method"]) for r in runs}
    counts = {key: sum(1 for r in runs if (r["task"], r["method"]) == key) for key in have}
    missing = [t for t in tasks if any(counts.get((t, m), 0) < n_seeds for m in REFERENCE_METHODS)]
    if missing:
        raise SystemExit(f"{runs_file} lacks reference runs of {len(missing)} tasks ({', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''}): run benchmarks/references.py for them")
    rows = []
    for task in tasks:
        mine = [r for r in runs if r["task"] == task]
        means = {m: float(np.mean([float(r["final_return"]) for r in mine if r["method"] == m]))
                 for m in REFERENCE_METHODS}
        best = max(REFERENCE_METHODS, key=lambda m: means[m])  # max keeps the first of equals
        starts = [float(r["start_return"]) for r in mine if r["method"] == REFERENCE_METHODS[0]]
        rows.append({"task": task, "start": round(float(np.mean(starts)), 4), "reference": round(means[best], 4),
                     "reference_method": best, "seeds": n_seeds, "env_steps": int(mine[0]["env_steps"])})
    return rows


def normalized(curves: Curves, runs_file: Path = REFERENCE_RUNS, n_seeds: int = REFERENCE_SEEDS) -> Curves:
    """``curves`` with every return replaced by its task's normalized score: :func:`reference_table`'s scales of
    ``runs_file`` over ``n_seeds`` seeds, 0 the task's start return, 1 its reference return."""
    scales = {str(r["task"]): TaskScale(float(str(r["start"])), float(str(r["reference"])))
              for r in reference_table(curves.tasks(), n_seeds, runs_file)}
    return normalize_curves(curves, scales)


def normalized_scores(curves: Curves, budgets: list[float]) -> dict[str, dict[float, dict[RunKey, float]]]:
    """Per method of ``curves``, each run's normalized score (:func:`normalized`) at each of ``budgets``: its last
    evaluation at or before it."""
    scores = normalized(curves)
    return {m: scores_at(scores.where(method=m), budgets) for m in curves.methods()}


def apply_on_validation(operator: Path, work: Path, family: str = "halfcheetah_vel", methods: tuple[str, ...] = (
        "operator",), n_tasks: int = 8, seeds: int = 3, budget: int = BUDGET, workers: int = 2,
        learned_start: Path | None = None) -> Path:
    """Apply ``operator`` with ``methods`` on ``family``'s first ``n_tasks`` validation tasks (``train`` tasks from
    :func:`validation_start` on) × ``seeds`` from fresh starts (and, for ``operator_learned_start``, from
    ``learned_start``, default the file beside the operator) for ``budget`` env steps, into ``work`` (a rerun reuses
    its finished runs); its curves file."""
    apply(ApplyConfig(operator_path=str(operator), out=str(work), task=TaskConfig(family), split="train",
                      task_start=validation_start(family), n_tasks=n_tasks, seeds=seeds, budget=budget,
                      methods=list(methods), workers=workers,
                      learned_start=None if learned_start is None else str(learned_start)))
    return work / "curves.csv"


def scored_budgets(batch: float, budget: float) -> list[float]:
    """The budgets a validation comparison reports: 1, 2, 4 and 8 batches of ``batch`` env steps up to B, and B."""
    return [b for b in report_budgets(batch, budget) if b <= budget]


def budget_label(env_steps: float, batch: float, budget: float) -> str:
    """``B`` or ``<n> batches``."""
    return "B" if env_steps == budget else f"{env_steps / batch:g} batches"


def paired_rows(mine: dict[float, dict[RunKey, float]], label: str,
                baselines: dict[str, dict[float, dict[RunKey, float]]], batch: float,
                budget: float) -> list[dict[str, object]]:
    """Per budget of ``mine`` (one method's normalized scores, :func:`scored_budgets`): its mean score as ``label``,
    and each baseline's with ``label``'s paired difference to it, each with a 95% CI resampling tasks, then seeds."""
    rows: list[dict[str, object]] = []
    for at in mine:
        row: dict[str, object] = {"budget": budget_label(at, batch, budget), "env_steps": int(at),
                                  label: interval(score_ci(mine[at]))}
        for name, scores in baselines.items():
            row[name] = interval(score_ci(scores[at]))
            row[f"{label}_minus_{name}"] = interval(paired_difference(pair(mine[at], scores[at])))
        rows.append(row)
    return rows


def against_validation(operator: Path, work: Path, label: str, baselines: tuple[str, ...], method: str = "operator",
                       learned_start: Path | None = None) -> list[dict[str, object]]:
    """Apply ``operator`` as ``method`` (``operator``, fresh starts; ``operator_learned_start``, from ``learned_start``
    or the file beside it) on the validation tasks of ``results/improvement_validation.csv`` (``train`` 32-39 × 3
    seeds, B) into ``work`` (a rerun reuses its finished runs), and per budget (1, 2, 4, 8 of its batches and B) its
    mean normalized score as ``label`` and its paired difference with each committed method of ``baselines``, each
    with a 95% CI resampling tasks, then seeds."""
    curves = apply_on_validation(operator, work, methods=(method,), learned_start=learned_start)
    _, ckpt = OperatorCheckpoint.load(operator)
    batch = float(BatchSchedule.of(ckpt).batch)
    budgets = scored_budgets(batch, BUDGET)
    mine = normalized_scores(read_curves([curves]), budgets)[method]
    committed = normalized_scores(read_curves([RESULTS / "improvement_validation.csv"]), budgets)
    return paired_rows(mine, label, {name: committed[name] for name in baselines}, batch, BUDGET)


# ------------------------------------------------------------------------------------------ memorization


def folded(policy: Policy) -> torch.Tensor:
    """θ folded into the identity normalizer: one coordinate system for every policy compared."""
    return fold_normalizer(policy.spec, policy.theta.double(), policy.normalizer,
                           ObsNormalizer.identity(policy.spec.obs_dim))


def training_snapshots(dataset: Path) -> torch.Tensor:
    """Every θⁿ of every training run of ``dataset`` [runs × (N+1), P], folded (see :func:`folded`)."""
    out = []
    for entry in load_manifest(dataset):
        tensors, meta = load_shard(dataset, entry)
        spec = PolicySpec.from_dict(meta["policy_spec"])
        for n in range(len(tensors["theta"])):
            norm = ObsNormalizer(tensors["norm_mean"][n].numpy(), tensors["norm_var"][n].numpy())
            out.append(folded(Policy(spec, tensors["theta"][n].float(), norm)))
    return torch.stack(out)


def memorization(run_dir: Path, snapshots: torch.Tensor, method: str = "operator",
                 peer: str = "ppo") -> dict[str, float]:
    """The memorization audit of an apply run with ``save_policies``: median distances (folded θ) from ``method``'s
    and ``peer``'s final policies to the nearest training checkpoint of ``snapshots``, and between two of ``peer``'s
    seeds on one task (how far apart two honest learners end)."""
    def load(name: str) -> dict[str, list[torch.Tensor]]:
        by_task: dict[str, list[torch.Tensor]] = {}
        for path in sorted((run_dir / "policies" / name).glob("*.safetensors")):
            by_task.setdefault(path.name.rsplit("-s", 1)[0], []).append(folded(load_policy(path)))
        return by_task

    def to_nearest(by_task: dict[str, list[torch.Tensor]]) -> float:
        thetas = torch.stack([t for ts in by_task.values() for t in ts])
        return float(torch.cdist(thetas, snapshots).min(1).values.median())

    mine, peers = load(method), load(peer)
    pairs = [float((a - b).norm()) for ts in peers.values() for i, a in enumerate(ts) for b in ts[i + 1:]]
    return {f"{method}_to_nearest_checkpoint": to_nearest(mine), f"{peer}_to_nearest_checkpoint": to_nearest(peers),
            f"{peer}_seed_to_seed": float(np.median(pairs))}


def interval(est: Interval) -> str:
    """``value [lo, hi]`` with three decimals."""
    return f"{est.value:.3f} [{est.lo:.3f}, {est.hi:.3f}]"


def dataset_or_exit(path: Path) -> Path:
    """The dataset directory, or exit with the command that recreates it."""
    if not (path / "manifest.json").exists():
        raise SystemExit(f"no dataset at {path}: recreate the shipped operator's training data with "
                         f"`{collect_command(out=str(path))}` (results/operators/halfcheetah_vel.collect.yaml), or "
                         "pass --dataset DIR")
    return path


# -------------------------------------------------------------------------------------------- output


def write_rows(benchmark: str, figures: dict[str, tuple[object, str]]) -> None:
    """Append ``figures`` (name → (value, note)) to ``results/reliability.csv``."""
    RELIABILITY.parent.mkdir(exist_ok=True)
    new = not RELIABILITY.exists()
    with RELIABILITY.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(RELIABILITY_FIELDS)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for name, (value, note) in figures.items():
            writer.writerow([stamp, platform.node(), benchmark, name, value, note])
