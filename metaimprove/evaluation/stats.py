"""Interval estimates for improvement curves: IQM with stratified-bootstrap 95% CIs as rliable reports them (same
draws, reimplemented), curve bands on a common env-step grid, and env steps to reach a return.

Why reimplemented: see the design notes (docs/design.md, "Statistics").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from scipy.stats import trim_mean

from metaimprove.errors import UserError

FloatArray = npt.NDArray[np.float64]

COLUMNS = ("method", "task", "seed", "env_steps", "return")
"""The header of every ``curves.csv``, in this order (extra columns are allowed and ignored)."""

IQM_CUT = 0.25
"""Fraction trimmed from each end: 0.25 makes the trimmed mean the interquartile mean."""

_CHUNK_ELEMENTS = 4_000_000
"""Bootstrap replicates are evaluated in chunks of about this many resampled scores (32 MB of float64)."""


# --------------------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Curves:
    """The rows of one or more ``curves.csv`` files as parallel columns, one entry per evaluation point.

    ``returns`` stands for the CSV column ``return`` (a Python keyword). Build one with
    :meth:`from_records` or :func:`metaimprove.evaluation.plot.read_curves`.
    """

    method: npt.NDArray[np.str_]
    task: npt.NDArray[np.str_]
    seed: npt.NDArray[np.int64]
    env_steps: FloatArray
    returns: FloatArray

    def __post_init__(self) -> None:
        lengths = {len(self.method), len(self.task), len(self.seed), len(self.env_steps), len(self.returns)}
        if len(lengths) != 1:
            raise ValueError(f"Curves columns have different lengths: {sorted(lengths)}")

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> Curves:
        """Build from mappings keyed by the CSV column names (``method, task, seed, env_steps, return``)."""
        rows = list(records)
        return cls(
            method=np.array([str(r["method"]) for r in rows], dtype=np.str_),
            task=np.array([str(r["task"]) for r in rows], dtype=np.str_),
            seed=np.array([int(r["seed"]) for r in rows], dtype=np.int64),
            env_steps=np.array([float(r["env_steps"]) for r in rows], dtype=np.float64),
            returns=np.array([float(r["return"]) for r in rows], dtype=np.float64),
        )

    def __len__(self) -> int:
        return len(self.method)

    def methods(self) -> list[str]:
        """Method names in order of first appearance (so the caller's file order sets legend order)."""
        return list(dict.fromkeys(self.method.tolist()))

    def tasks(self) -> list[str]:
        """Task names in natural order (``test/2`` before ``test/10``)."""
        return sorted(set(self.task.tolist()), key=natural_key)

    def where(self, method: str | None = None, task: str | None = None) -> Curves:
        """The rows of one method and/or one task."""
        keep = np.ones(len(self), dtype=bool)
        if method is not None:
            keep &= self.method == method
        if task is not None:
            keep &= self.task == task
        return Curves(self.method[keep], self.task[keep], self.seed[keep], self.env_steps[keep], self.returns[keep])

    def runs(self) -> dict[str, list[tuple[int, FloatArray, FloatArray]]]:
        """Per task, the runs ``(seed, env_steps ascending, returns)`` of a single-method table."""
        methods = self.methods()
        if len(methods) > 1:
            raise ValueError(f"runs() needs the rows of one method, got {methods}")
        out: dict[str, list[tuple[int, FloatArray, FloatArray]]] = {}
        for task in self.tasks():
            in_task = self.task == task
            for seed in sorted(set(self.seed[in_task].tolist())):
                sel = in_task & (self.seed == seed)
                order = np.argsort(self.env_steps[sel], kind="stable")
                steps, rets = self.env_steps[sel][order], self.returns[sel][order]
                repeated = steps[1:][np.diff(steps) == 0]
                if repeated.size:
                    # Two different returns at one step make "the return at x" ambiguous.
                    raise UserError(
                        f"method {methods[0]!r} task {task!r} seed {seed}: env_steps {repeated[0]:g} appears twice"
                    )
                out.setdefault(task, []).append((seed, steps, rets))
        return out


def natural_key(text: str) -> list[Any]:
    """Sort key that orders embedded integers numerically: ``test/2`` < ``test/10``."""
    parts: list[Any] = []
    number = ""
    word = ""
    for ch in text:
        if ch.isdigit():
            if word:
                parts.append((1, word))
                word = ""
            number += ch
        else:
            if number:
                parts.append((0, int(number)))
                number = ""
            word += ch
    if number:
        parts.append((0, int(number)))
    if word:
        parts.append((1, word))
    return parts


# ------------------------------------------------------------------------------------------ IQM + CI


class Estimate(NamedTuple):
    """A point estimate with its confidence interval."""

    iqm: float
    lo: float
    hi: float


def iqm(x: npt.ArrayLike) -> float:
    """Interquartile mean of all values in ``x``: rliable's ``aggregate_iqm`` (scipy 25% trimmed mean)."""
    values = np.asarray(x, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("iqm of an empty array")
    if np.isnan(values).any():
        # A NaN score is a broken evaluation upstream; a NaN IQM would only hide where it came from.
        raise ValueError("iqm of an array containing NaN")
    return float(trim_mean(values, IQM_CUT, axis=None))


def iqm_ci(scores: npt.ArrayLike, reps: int = 50_000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """IQM of ``scores`` [runs, tasks] with a stratified bootstrap CI over runs (rliable's protocol).

    Runs are resampled with replacement independently within each task; tasks are not resampled
    (the CI answers "what if we reran with other seeds on these tasks"). A 1-D ``scores`` is one task.
    ``seed`` fixes the resampling: the same scores and seed give identical numbers.
    """
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"scores must be a non-empty [runs, tasks] array, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError("scores contain NaN")
    point, lo, hi = _bootstrap_iqm(arr[:, :, None], reps, confidence, seed)
    return Estimate(float(point[0]), float(lo[0]), float(hi[0]))


def _bootstrap_iqm(
    scores: FloatArray, reps: int, confidence: float, seed: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """IQM and percentile-bootstrap CI at each point of ``scores`` [runs, tasks, points], stratified by task.

    One replicate draws, per task, ``runs`` run indices with replacement and uses those *whole runs*
    at every point, so a band is made of resampled curves (rliable's 3-D mode instead redraws per
    point; each point's marginal CI is the same either way). With one point this is exactly
    rliable's draw: ``RandomState(seed).choice(runs, (runs, tasks))`` per replicate, in order.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n_runs, n_tasks, n_points = scores.shape
    point = trim_mean(scores.reshape(n_runs * n_tasks, n_points), IQM_CUT, axis=0)
    # Legacy RandomState, not Generator: it reproduces rliable's np.random.choice stream.
    rng = np.random.RandomState(seed)
    task_index = np.arange(n_tasks)[None, None, :]
    replicates = np.empty((reps, n_points))
    chunk = max(1, _CHUNK_ELEMENTS // (n_runs * n_tasks * n_points))
    for start in range(0, reps, chunk):
        n = min(chunk, reps - start)
        # Drawing n replicates at once consumes the stream exactly as n sequential draws would.
        run_index = rng.choice(n_runs, size=(n, n_runs, n_tasks), replace=True)
        sample = scores[run_index, task_index]  # [n, runs, tasks, points]
        replicates[start : start + n] = trim_mean(sample.reshape(n, n_runs * n_tasks, n_points), IQM_CUT, axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(replicates, [100.0 * alpha, 100.0 * (1.0 - alpha)], axis=0)
    return point, lo, hi


# ---------------------------------------------------------------------------------------------- bands


@dataclass(frozen=True)
class Band:
    """One method's IQM curve with its CI on an env-step grid; NaN where some run has no value yet/any more."""

    method: str
    env_steps: FloatArray
    iqm: FloatArray
    lo: FloatArray
    hi: FloatArray
    n_tasks: int
    n_seeds: int
    """Runs per task (every task has the same number)."""


def step_values(steps: npt.ArrayLike, values: npt.ArrayLike, grid: npt.ArrayLike) -> FloatArray:
    """The last evaluation at or before each grid point; NaN before the first and after the last one.

    A policy's return only changes when it is evaluated again, so the curve is a step function. Past
    the run's last evaluation we know nothing (the run stopped or crashed), so we do not extrapolate.
    ``steps`` must be ascending.
    """
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    g = np.asarray(grid, dtype=np.float64)
    out = np.full(g.shape, np.nan)
    if s.size == 0:
        return out
    index = np.searchsorted(s, g, side="right") - 1
    known = (index >= 0) & (g <= s[-1])
    out[known] = v[index[known]]
    return out


def common_grid(curves: Curves, max_points: int = 500) -> FloatArray:
    """Every env-step value at which some run was evaluated, thinned evenly to at most ``max_points``.

    Using the evaluation points themselves keeps each step of the curve where it happened; thinning
    only bounds the plotting and bootstrap cost for long, irregularly evaluated runs.
    """
    grid = np.unique(curves.env_steps)
    if grid.size > max_points:
        grid = grid[np.unique(np.linspace(0, grid.size - 1, max_points).round().astype(int))]
    return grid


def curve_band(curves: Curves, grid: npt.ArrayLike, reps: int = 2_000, confidence: float = 0.95, seed: int = 0) -> Band:
    """IQM over all (task, seed) runs of one method at each grid point, with a stratified bootstrap CI.

    Each run is read off as a step function (:func:`step_values`). A grid point gets a value only when
    every run has one there: an IQM over whichever runs happen to survive would silently change the
    population along the curve. Every task must have the same number of seeds (the bootstrap
    resamples seeds within each task, as rliable does).
    """
    methods = curves.methods()
    if len(methods) != 1:
        raise ValueError(f"curve_band needs the rows of exactly one method, got {methods}")
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or g.size == 0:
        raise ValueError(f"grid must be a non-empty 1-D array, got shape {g.shape}")
    runs = curves.runs()
    seeds_per_task = {task: len(task_runs) for task, task_runs in runs.items()}
    if len(set(seeds_per_task.values())) != 1:
        detail = ", ".join(f"{task}: {n}" for task, n in seeds_per_task.items())
        raise UserError(
            f"method {methods[0]!r} has different numbers of seeds per task ({detail}); "
            "evaluate every task with the same seeds"
        )
    tasks = list(runs)
    n_seeds = len(runs[tasks[0]])
    scores = np.empty((n_seeds, len(tasks), g.size))
    for j, task in enumerate(tasks):
        for i, (_, steps, rets) in enumerate(runs[task]):
            scores[i, j] = step_values(steps, rets, g)
    # Only complete grid points are bootstrapped: the rest are NaN by definition, and skipping them is cheaper.
    complete = ~np.isnan(scores).any(axis=(0, 1))
    center, lo, hi = (np.full(g.size, np.nan) for _ in range(3))
    if complete.any():
        center[complete], lo[complete], hi[complete] = _bootstrap_iqm(scores[:, :, complete], reps, confidence, seed)
    return Band(methods[0], g, center, lo, hi, n_tasks=len(tasks), n_seeds=n_seeds)


# --------------------------------------------------------------------------------------- steps to reach


def steps_to_reach(curve: Band | tuple[npt.ArrayLike, npt.ArrayLike], target: float) -> float:
    """First env_steps at which an IQM curve is at or above ``target``; ``inf`` if it never gets there.

    ``curve`` is a :class:`Band` or a pair ``(env_steps, values)`` with ascending steps. NaN points
    (no complete set of runs) never count as reached. ``inf`` keeps ratios meaningful: never / x = inf.
    """
    steps, values = (curve.env_steps, curve.iqm) if isinstance(curve, Band) else curve
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        hit = np.flatnonzero(v >= target)
    return float(s[hit[0]]) if hit.size else math.inf


def value_at(curve: Band, env_steps: float) -> float:
    """The curve's IQM at ``env_steps`` (step-wise: last grid point at or before it); NaN if unknown."""
    return float(step_values(curve.env_steps, curve.iqm, [env_steps])[0])


def reach_ratio(curve: Band, teacher: Band, budget: float) -> float:
    """Env steps ``curve`` needs to reach the teacher's IQM return at ``budget``, over the teacher's own.

    Below 1 means fewer steps than the teacher. ``inf`` if ``curve`` never reaches it; NaN if the
    teacher's return at the budget is unknown or the teacher starts at it (0 steps, no ratio).
    """
    target = value_at(teacher, budget)
    if math.isnan(target):
        return math.nan
    teacher_steps = steps_to_reach(teacher, target)
    if teacher_steps <= 0:
        return math.nan
    return steps_to_reach(curve, target) / teacher_steps
