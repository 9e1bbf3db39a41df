"""Interval estimates for improvement curves: IQM with stratified-bootstrap 95% CIs as rliable reports them (same
draws, reimplemented), curve bands on a common env-step grid, and env steps to reach a return.

Comparisons across tasks use per-task normalized scores (0 at the task's start return, 1 at its reference
return), paired by (task, seed): paired differences, per-method scores, probability of improvement and steps to
reach the best peer, all with CIs from one bootstrap that resamples tasks, then seeds within each task.

Why reimplemented: see the design notes (docs/design.md, "Statistics").
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
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

    def where(self, method: str | None = None, task: str | None = None,
              seeds: Iterable[int] | None = None) -> Curves:
        """The rows of one method and/or one task and/or some seeds."""
        keep = np.ones(len(self), dtype=bool)
        if method is not None:
            keep &= self.method == method
        if task is not None:
            keep &= self.task == task
        if seeds is not None:
            keep &= np.isin(self.seed, list(seeds))
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
    _check_bootstrap_args(reps, confidence)
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


# ------------------------------------------------------------------------------- normalized scores

RunKey = tuple[str, int]
"""A run's identity, ``(task, seed)``: the unit on which methods are paired."""

PAIR_ON_INTERSECTION = "intersection"
"""Pass as ``subset`` to pair two methods on the runs they share (e.g. a peer run on fewer tasks × seeds)."""

REPORT_BATCHES = (1, 2, 4, 8)
"""Budgets in batches of the few-shot regime; :func:`report_budgets` adds B and 4B."""


class TaskScale(NamedTuple):
    """One task's normalization: its start return scores 0, its reference return scores 1."""

    start: float
    reference: float


def read_scales(path: Path) -> dict[str, TaskScale]:
    """Each task's :class:`TaskScale` from a reference table: a CSV with ``task``, ``start`` and ``reference`` columns
    (``benchmarks/references.py`` writes one as ``results/references.csv``)."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise UserError(f"cannot read the reference table {path}: {exc.strerror}") from None
    missing = {"task", "start", "reference"} - set(rows[0] if rows else {})
    if missing:
        raise UserError(f"{path} is not a reference table: it lacks the column(s) {', '.join(sorted(missing))}")
    try:
        return {r["task"]: TaskScale(float(r["start"]), float(r["reference"])) for r in rows}
    except ValueError as exc:
        raise UserError(f"{path}: {exc}; start and reference must be numbers") from None


class NoScoreScale(UserError):
    """A task whose reference return does not exceed its start return: no normalized score exists for it, so a
    caller that measures many tasks can report the task as unscored rather than stop."""


def normalize(returns: npt.ArrayLike, start: float, reference: float) -> FloatArray:
    """Per-task score of raw returns: 0 at the task's start return, 1 at its reference return."""
    if not (math.isfinite(start) and math.isfinite(reference)) or reference <= start:
        raise NoScoreScale(f"reference return {reference:g} does not exceed start return {start:g}; no score scale")
    return (np.asarray(returns, dtype=np.float64) - start) / (reference - start)


def normalize_curves(curves: Curves, scales: Mapping[str, tuple[float, float]]) -> Curves:
    """``curves`` with each return replaced by its task's score; ``scales`` maps task -> :class:`TaskScale`.

    Every task in ``curves`` needs an entry; extra entries are ignored (a cache may cover more tasks).
    """
    tasks = curves.tasks()
    missing = [task for task in tasks if task not in scales]
    if missing:
        raise UserError(
            f"the reference table does not match the task list: no start/reference return for {', '.join(missing)}; "
            "rebuild the reference cache for these tasks"
        )
    scores = np.empty_like(curves.returns)
    for task in tasks:
        start, reference = scales[task]
        rows = curves.task == task
        try:
            scores[rows] = normalize(curves.returns[rows], float(start), float(reference))
        except UserError as exc:
            raise type(exc)(f"task {task!r}: {exc}") from None
    return Curves(curves.method, curves.task, curves.seed, curves.env_steps, scores)


def report_budgets(batch_env_steps: float, budget: float) -> tuple[float, ...]:
    """The env-step budgets every score is reported at: 1, 2, 4 and 8 batches, B and 4B."""
    return (*(n * float(batch_env_steps) for n in REPORT_BATCHES), float(budget), 4.0 * float(budget))


def scores_at(curves: Curves, budgets: Iterable[float]) -> dict[float, dict[RunKey, float]]:
    """Per budget, each run's score of one method: its last evaluation at or before the budget (:func:`step_values`).

    NaN where the run had no evaluation yet, or had stopped before the budget.
    """
    grid = np.asarray(list(budgets), dtype=np.float64)
    values = {
        (task, seed): step_values(steps, rets, grid)
        for task, task_runs in curves.runs().items()
        for seed, steps, rets in task_runs
    }
    return {float(b): {key: float(v[i]) for key, v in values.items()} for i, b in enumerate(grid)}


def deployed_until(curves: Curves, budget: float) -> Curves:
    """One method's ``curves`` with each run that ends before ``budget`` (its next batch would not fit) held at its
    last return up to ``budget``: what it deploys there. Scores at budgets up to ``budget`` read from these
    (:func:`scores_at`)."""
    extra = [(t, s, r[-1]) for t, runs in curves.runs().items() for s, steps, r in runs if steps[-1] < budget]
    if not extra:
        return curves
    task, seed, returns = (np.array(column) for column in zip(*extra, strict=True))
    return Curves(np.concatenate([curves.method, np.full(len(extra), curves.method[0])]),
                  np.concatenate([curves.task, task]), np.concatenate([curves.seed, seed.astype(np.int64)]),
                  np.concatenate([curves.env_steps, np.full(len(extra), budget)]),
                  np.concatenate([curves.returns, returns.astype(np.float64)]))


# ----------------------------------------------------------------------- two-level (task, seed) bootstrap


_Statistic = Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]], FloatArray]
"""A statistic of drawn runs: ``(task [n, tasks], seed [n, tasks, seeds], valid [n, tasks, seeds]) -> [n, 1]``."""


class Interval(NamedTuple):
    """A point estimate with its bootstrap CI, and the tasks and (task, seed) runs it rests on."""

    value: float
    lo: float
    hi: float
    n_tasks: int
    n_runs: int


@dataclass(frozen=True)
class Paired:
    """Two methods' scores on the same (task, seed) runs as [tasks, seeds] arrays, NaN past a task's seeds."""

    tasks: tuple[str, ...]
    seeds: tuple[tuple[int, ...], ...]
    x: FloatArray
    y: FloatArray

    @property
    def n_pairs(self) -> int:
        """How many (task, seed) pairs the comparison uses."""
        return sum(len(s) for s in self.seeds)


def pair(
    x: Mapping[RunKey, float],
    y: Mapping[RunKey, float],
    subset: Iterable[RunKey] | str | None = None,
) -> Paired:
    """Line up two methods' per-run scores by (task, seed), for paired differences and P(improvement).

    The runs must match exactly unless ``subset`` names the runs to use, or is :data:`PAIR_ON_INTERSECTION`.
    """
    keys = _matched_keys(set(x), set(y), subset)
    _refuse_missing_scores({k: x[k] for k in keys})
    _refuse_missing_scores({k: y[k] for k in keys})
    tasks, seeds, counts = _layout(keys)
    return Paired(tasks, seeds, _table(x, tasks, seeds, counts)[..., 0], _table(y, tasks, seeds, counts)[..., 0])


def score_ci(
    scores: Mapping[RunKey, float],
    statistic: str = "mean",
    reps: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """One method's mean (or ``"iqm"``) score over its runs, with the CI of the task-then-seed bootstrap.

    Every run counts once. Runs laid out like a :class:`Paired` comparison's get the same draws for the same ``seed``.
    """
    reducers = {"mean": _masked_mean, "iqm": _masked_iqm}
    if statistic not in reducers:
        raise ValueError(f"statistic must be one of {sorted(reducers)}, got {statistic!r}")
    _refuse_missing_scores(scores)
    tasks, seeds, counts = _layout(set(scores))
    values = _table(scores, tasks, seeds, counts)
    reduce = reducers[statistic]
    return _interval(counts, lambda t, s, m: reduce(values[t[..., None], s], m), reps, confidence, seed)


def paired_difference(paired: Paired, reps: int = 10_000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Mean over (task, seed) pairs of ``x - y``, with the CI of the task-then-seed bootstrap."""
    diff = paired.x - paired.y
    return score_ci(_as_scores(paired, diff), "mean", reps, confidence, seed)


def probability_of_improvement(paired: Paired, reps: int = 10_000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """P(x > y) + ½ P(x = y) over runs within a task, averaged over tasks (rliable's metric), with a bootstrap CI.

    Within a task every x run is compared with every y run (the Mann-Whitney U statistic over the task's
    run counts). A replicate resamples tasks, then seeds within each, taking both methods' runs at the drawn seeds.
    """
    counts = np.array([len(s) for s in paired.seeds], dtype=np.int64)
    x, y = paired.x, paired.y

    def statistic(task: npt.NDArray[np.int64], seed: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]) -> FloatArray:
        xs, ys = x[task[..., None], seed], y[task[..., None], seed]  # [n, tasks, seeds]
        wins = (xs[..., :, None] > ys[..., None, :]) + 0.5 * (xs[..., :, None] == ys[..., None, :])
        both = mask[..., :, None] & mask[..., None, :]
        per_task = np.where(both, wins, 0.0).sum(axis=(2, 3)) / both.sum(axis=(2, 3))
        return per_task.mean(axis=1)[:, None]

    return _interval(counts, statistic, reps, confidence, seed, points=int(counts.max()))


def steps_to_best_peer(
    method: Curves,
    peer: Curves,
    budget: float,
    subset: Iterable[RunKey] | str | None = None,
    grid: npt.ArrayLike | None = None,
    reps: int = 2_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Env steps ``method``'s mean normalized score needs to reach ``peer``'s mean at ``budget``, over ``budget``.

    Both take normalized curves of one method; ``peer`` is the best peer. ``inf`` when never reached
    (a replicate that never reaches counts as inf, so a CI's upper end may be inf). A replicate resamples
    tasks, then seeds, and moves the target with the peer's runs at the same draws. ``grid`` defaults to
    every step ``method`` was evaluated at, where its mean curve can change.
    """
    method_runs, peer_runs = _run_curves(method), _run_curves(peer)
    keys = _matched_keys(set(method_runs), set(peer_runs), subset)
    tasks, seeds, counts = _layout(keys)
    g = np.unique(method.env_steps) if grid is None else np.asarray(grid, dtype=np.float64)
    curve = _table({k: step_values(*method_runs[k], g) for k in keys}, tasks, seeds, counts)
    at_budget = {k: float(step_values(*peer_runs[k], [budget])[0]) for k in keys}
    unknown = sorted(k for k, v in at_budget.items() if math.isnan(v))
    if unknown:
        raise UserError(f"the peer has no score at budget {budget:g} on runs {_keys_text(unknown)}")
    target = _table(at_budget, tasks, seeds, counts)

    def statistic(task: npt.NDArray[np.int64], seed: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]) -> FloatArray:
        goal = _masked_mean(target[task[..., None], seed], mask)  # [n, 1]
        mean_curve = _masked_mean(curve[task[..., None], seed], mask)  # [n, points]
        with np.errstate(invalid="ignore"):
            reached = mean_curve >= goal
        first = np.where(reached.any(axis=1), g[reached.argmax(axis=1)], math.inf)
        return (first / budget)[:, None]

    return _interval(counts, statistic, reps, confidence, seed, points=g.size, exact_ends=True)


# ----------------------------------------------------------------------------------- bootstrap engine


def _matched_keys(x: set[RunKey], y: set[RunKey], subset: Iterable[RunKey] | str | None) -> set[RunKey]:
    """The runs to pair: all of them when both methods ran the same ones, else the ``subset`` asked for."""
    if subset == PAIR_ON_INTERSECTION:
        keys = x & y
    elif subset is None:
        if x != y:
            raise UserError(
                f"runs do not match: only in x {_keys_text(sorted(x - y))}; only in y {_keys_text(sorted(y - x))}; "
                f"pass subset={PAIR_ON_INTERSECTION!r} to pair on the {len(x & y)} shared runs"
            )
        keys = x
    elif isinstance(subset, str):
        raise ValueError(f"subset must be runs or {PAIR_ON_INTERSECTION!r}, got {subset!r}")
    else:
        keys = {(str(t), int(s)) for t, s in subset}
        absent = sorted(keys - (x & y))
        if absent:
            raise UserError(f"subset runs missing from a method: {_keys_text(absent)}")
    if not keys:
        raise UserError("no (task, seed) runs to compare")
    return keys


def _keys_text(keys: list[RunKey], limit: int = 6) -> str:
    """Runs as ``task/seed`` text for a one-line message, the first ``limit`` of them."""
    text = ", ".join(f"({task}, {seed})" for task, seed in keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return (text or "none") + more


def _layout(keys: Iterable[RunKey]) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...], npt.NDArray[np.int64]]:
    """Tasks in natural order, each task's seeds ascending, and the seed count per task."""
    by_task: dict[str, list[int]] = {}
    for task, seed in keys:
        by_task.setdefault(task, []).append(seed)
    if not by_task:
        raise UserError("no (task, seed) runs to compare")
    tasks = tuple(sorted(by_task, key=natural_key))
    seeds = tuple(tuple(sorted(by_task[t])) for t in tasks)
    return tasks, seeds, np.array([len(s) for s in seeds], dtype=np.int64)


def _table(
    values: Mapping[RunKey, Any], tasks: tuple[str, ...], seeds: tuple[tuple[int, ...], ...], counts: npt.NDArray
) -> FloatArray:
    """Per-run values (scalars or equal-length arrays) as a [tasks, max seeds, points] array padded with NaN."""
    width = np.asarray(values[(tasks[0], seeds[0][0])], dtype=np.float64).size
    out = np.full((len(tasks), int(counts.max()), width), np.nan)
    for i, (task, task_seeds) in enumerate(zip(tasks, seeds, strict=True)):
        for j, s in enumerate(task_seeds):
            out[i, j] = values[(task, s)]
    return out


def _as_scores(paired: Paired, values: FloatArray) -> dict[RunKey, float]:
    """A [tasks, seeds] array of a :class:`Paired` layout back as per-run scores."""
    return {
        (task, s): float(values[i, j])
        for i, (task, task_seeds) in enumerate(zip(paired.tasks, paired.seeds, strict=True))
        for j, s in enumerate(task_seeds)
    }


def _masked_mean(sample: FloatArray, mask: npt.NDArray[np.bool_]) -> FloatArray:
    """Mean over the valid runs of ``sample`` [n, tasks, seeds, points] -> [n, points]."""
    m = mask[..., None]
    return np.where(m, sample, 0.0).sum(axis=(1, 2)) / m.sum(axis=(1, 2))


def _masked_iqm(sample: FloatArray, mask: npt.NDArray[np.bool_]) -> FloatArray:
    """scipy's 25% trimmed mean over the valid runs of ``sample`` [n, tasks, seeds, points] -> [n, points]."""
    n, n_tasks, width, n_points = sample.shape
    ordered = np.sort(np.where(mask[..., None], sample, np.inf).reshape(n, n_tasks * width, n_points), axis=1)
    valid = mask.reshape(n, -1).sum(axis=1)[:, None]
    cut = (valid * IQM_CUT).astype(np.int64)  # trim_mean's int(proportion * nobs) from each end
    position = np.arange(n_tasks * width)[None, :]
    keep = ((position >= cut) & (position < valid - cut))[..., None]
    return np.where(keep, ordered, 0.0).sum(axis=1) / keep.sum(axis=1)


def _interval(
    counts: npt.NDArray[np.int64],
    statistic: _Statistic,
    reps: int,
    confidence: float,
    seed: int,
    points: int = 1,
    exact_ends: bool = False,
) -> Interval:
    """Point estimate and CI of ``statistic(task, seed, mask) -> [n, 1]`` under the task-then-seed bootstrap.

    A replicate draws as many tasks as there are, with replacement, then for each drawn task as many of its
    seeds as it has, with replacement. The point estimate is the same statistic on the original runs.
    ``points`` is how many values per drawn run the statistic touches (it sets the chunk size).
    ``exact_ends`` takes the CI ends as order statistics (no interpolation), so that inf survives as an end.
    """
    _check_bootstrap_args(reps, confidence)
    n_tasks, width = counts.size, int(counts.max())
    identity_seed = np.broadcast_to(np.arange(width), (1, n_tasks, width))
    point = float(statistic(np.arange(n_tasks)[None, :], identity_seed, identity_seed < counts[None, :, None])[0, 0])
    rng = np.random.default_rng(seed)
    replicates = np.empty(reps)
    chunk = max(1, _CHUNK_ELEMENTS // (n_tasks * width * points))
    for start in range(0, reps, chunk):
        n = min(chunk, reps - start)
        task = rng.integers(0, n_tasks, size=(n, n_tasks))
        drawn = np.broadcast_to(counts[task][..., None], (n, n_tasks, width))
        seed_index = rng.integers(0, drawn)
        replicates[start : start + n] = statistic(task, seed_index, np.arange(width) < drawn)[:, 0]
    alpha = (1.0 - confidence) / 2.0
    if exact_ends:
        lo = float(np.percentile(replicates, 100.0 * alpha, method="lower"))
        hi = float(np.percentile(replicates, 100.0 * (1.0 - alpha), method="higher"))
    else:
        lo, hi = (float(v) for v in np.percentile(replicates, [100.0 * alpha, 100.0 * (1.0 - alpha)]))
    return Interval(point, lo, hi, n_tasks=n_tasks, n_runs=int(counts.sum()))


def _check_bootstrap_args(reps: int, confidence: float) -> None:
    """Refuse a bootstrap with no replicates or a confidence outside (0, 1)."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _refuse_missing_scores(scores: Mapping[RunKey, float]) -> None:
    """Refuse NaN scores (a run evaluated after the budget, or stopped before it) by naming the runs."""
    missing = sorted(k for k, v in scores.items() if math.isnan(v))
    if missing:
        raise UserError(f"no score (NaN) on runs {_keys_text(missing)}: was each run evaluated at this budget?")


def _run_curves(curves: Curves) -> dict[RunKey, tuple[FloatArray, FloatArray]]:
    """Each run's ``(env_steps, scores)`` of a one-method table, keyed by (task, seed)."""
    return {(task, seed): (steps, vals) for task, task_runs in curves.runs().items() for seed, steps, vals in task_runs}
