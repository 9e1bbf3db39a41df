"""Interval estimates: IQM by hand, CI coverage/shrinkage/determinism, step interpolation, steps to reach;
normalized scores, paired differences and P(improvement) under the task-then-seed bootstrap."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaimprove.errors import UserError
from metaimprove.evaluation.stats import (
    PAIR_ON_INTERSECTION,
    Band,
    Curves,
    common_grid,
    curve_band,
    deployed_until,
    iqm,
    iqm_ci,
    natural_key,
    normalize,
    normalize_curves,
    pair,
    paired_difference,
    probability_of_improvement,
    reach_ratio,
    report_budgets,
    score_ci,
    scores_at,
    step_values,
    steps_to_best_peer,
    steps_to_reach,
)


def _curves(runs: dict[tuple[str, str, int], list[tuple[float, float]]]) -> Curves:
    """Curves from {(method, task, seed): [(env_steps, return), ...]}."""
    return Curves.from_records(
        {"method": m, "task": t, "seed": s, "env_steps": x, "return": r}
        for (m, t, s), points in runs.items()
        for x, r in points
    )


def test_where_selects_by_method_task_and_seeds() -> None:
    curves = _curves({(m, t, s): [(0.0, float(s)), (1.0, float(s) + 1)]
                      for m in ("a", "b") for t in ("x", "y") for s in (0, 1, 2)})
    picked = curves.where(method="a", task="y", seeds=range(2))
    assert set(picked.method) == {"a"} and set(picked.task) == {"y"} and sorted(set(picked.seed.tolist())) == [0, 1]
    assert len(picked) == 4 and len(curves.where(seeds=[2])) == 8 and len(curves.where(seeds=[])) == 0


# ------------------------------------------------------------------------------------------------ iqm


def test_iqm_matches_hand_computation() -> None:
    # 8 values: drop the 2 lowest and the 2 highest, average 3, 4, 5, 6. The outlier must not count.
    assert iqm([100, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)
    # A [runs, tasks] matrix is pooled over every run of every task.
    assert iqm([[1, 5], [2, 6], [3, 7], [4, 100]]) == pytest.approx(4.5)


def test_iqm_agrees_with_rliable_metric() -> None:
    metrics = pytest.importorskip("rliable.metrics")
    x = np.random.default_rng(0).normal(size=(7, 3))
    assert iqm(x) == pytest.approx(float(metrics.aggregate_iqm(x)), abs=1e-12)


def test_iqm_rejects_nan_and_empty() -> None:
    with pytest.raises(ValueError, match="NaN"):
        iqm([1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="empty"):
        iqm([])


def test_ci_contains_iqm_and_shrinks_with_more_seeds() -> None:
    rng = np.random.default_rng(1)
    few = rng.normal(size=(5, 3))
    many = rng.normal(size=(50, 3))
    e_few = iqm_ci(few, reps=2_000, seed=0)
    e_many = iqm_ci(many, reps=2_000, seed=0)
    for e in (e_few, e_many):
        assert e.lo < e.iqm < e.hi
    assert e_few.iqm == pytest.approx(iqm(few))
    # 10× the seeds: the width should fall by about sqrt(10) ≈ 3.2.
    assert (e_many.hi - e_many.lo) < 0.6 * (e_few.hi - e_few.lo)


def test_ci_is_seeded() -> None:
    x = np.random.default_rng(2).normal(size=(6, 4))
    assert iqm_ci(x, reps=1_000, seed=7) == iqm_ci(x, reps=1_000, seed=7)
    assert iqm_ci(x, reps=1_000, seed=7) != iqm_ci(x, reps=1_000, seed=8)
    # Not tied to numpy's global RNG (rliable's own seeding is).
    np.random.seed(123)
    a = iqm_ci(x, reps=1_000, seed=7)
    np.random.seed(456)
    assert iqm_ci(x, reps=1_000, seed=7) == a


def test_bootstrap_is_stratified_by_task() -> None:
    # Task A scores 0 on every seed, task B 100. Resampling seeds *within* tasks always gives three 0s and
    # three 100s, whose IQM is 50, so the CI collapses to a point; pooling runs across tasks would not.
    scores = np.array([[0.0, 100.0]] * 3)
    e = iqm_ci(scores, reps=500, seed=0)
    assert (e.iqm, e.lo, e.hi) == (50.0, 50.0, 50.0)


_RLIABLE_CI = """
import json
import numpy as np
from rliable import library, metrics
x = np.random.default_rng(3).normal(size=(7, 4))
np.random.seed(5)  # rliable draws from the global RNG
_, ci = library.get_interval_estimates({"m": x}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=500)
print(json.dumps(ci["m"].ravel().tolist()))
"""


def test_ci_matches_rliable_when_it_imports() -> None:
    # In a subprocess: rliable.library imports absl, whose log handler keeps the stderr it saw at import (pytest's
    # capture), and Hydra's logging setup in the in-process CLI tests closes every existing handler's stream.
    proc = subprocess.run([sys.executable, "-c", _RLIABLE_CI], capture_output=True, text=True, check=False)
    if proc.returncode != 0:  # rliable.library breaks on some arch/pandas combinations
        pytest.skip(f"rliable.library does not run here: {proc.stderr.strip().splitlines()[-1:]}")
    x = np.random.default_rng(3).normal(size=(7, 4))
    e = iqm_ci(x, reps=500, seed=5)
    np.testing.assert_allclose([e.lo, e.hi], json.loads(proc.stdout), rtol=1e-12)


def test_ci_confidence_level_orders_widths() -> None:
    x = np.random.default_rng(4).normal(size=(10, 2))
    e90 = iqm_ci(x, reps=2_000, confidence=0.90, seed=0)
    e99 = iqm_ci(x, reps=2_000, confidence=0.99, seed=0)
    assert e99.lo < e90.lo and e90.hi < e99.hi
    with pytest.raises(ValueError, match="confidence"):
        iqm_ci(x, confidence=95)


# ------------------------------------------------------------------------------------------- curves


def test_step_values_last_evaluation_at_or_before_without_extrapolation() -> None:
    got = step_values([0, 10, 20], [1.0, 2.0, 3.0], [-5, 0, 5, 9.9, 10, 19, 20, 21, 100])
    np.testing.assert_array_equal(got, [np.nan, 1, 1, 1, 2, 2, 3, np.nan, np.nan])


def test_curve_band_hand_example() -> None:
    # One task, four seeds evaluated on different grids; seed 3 stops at step 6.
    curves = _curves(
        {
            ("ppo", "t", 0): [(0, 0.0), (4, 10.0), (8, 20.0)],
            ("ppo", "t", 1): [(0, 1.0), (2, 11.0), (8, 21.0)],
            ("ppo", "t", 2): [(0, 2.0), (5, 12.0), (8, 22.0)],
            ("ppo", "t", 3): [(0, 100.0), (3, 200.0), (6, 300.0)],
        }
    )
    band = curve_band(curves, np.arange(10), reps=200, seed=0)
    # At x=4 the runs read 10, 11, 2, 200 -> IQM drops 2 and 200 -> mean(10, 11).
    assert band.iqm[4] == pytest.approx(10.5)
    # At x=2: 0, 11, 2, 100 -> mean(2, 11).
    assert band.iqm[2] == pytest.approx(6.5)
    # x=6 is seed 3's last evaluation (still known); past it the band stops rather than extrapolating.
    assert band.iqm[6] == pytest.approx(11.5)
    assert np.isnan(band.iqm[7:]).all() and np.isnan(band.lo[7:]).all() and np.isnan(band.hi[7:]).all()
    finite = ~np.isnan(band.iqm)
    assert (band.lo[finite] <= band.iqm[finite]).all() and (band.iqm[finite] <= band.hi[finite]).all()
    assert (band.n_tasks, band.n_seeds, band.method) == (1, 4, "ppo")


def test_curve_band_stratifies_over_tasks_and_is_seeded() -> None:
    runs = {
        ("op", task, s): [(0, base + s), (10, base + 10 + s)] for task, base in (("a", 0), ("b", 100)) for s in range(3)
    }
    curves = _curves(runs)
    grid = common_grid(curves)
    np.testing.assert_array_equal(grid, [0, 10])
    band = curve_band(curves, grid, reps=300, seed=1)
    assert band.n_tasks == 2 and band.n_seeds == 3
    assert band.iqm[0] == pytest.approx(iqm([0, 1, 2, 100, 101, 102]))
    again = curve_band(curves, grid, reps=300, seed=1)
    np.testing.assert_array_equal(band.lo, again.lo)
    np.testing.assert_array_equal(band.hi, again.hi)


def test_curve_band_rejects_uneven_seeds_and_mixed_methods() -> None:
    uneven = _curves({("op", "a", 0): [(0, 1.0)], ("op", "a", 1): [(0, 1.0)], ("op", "b", 0): [(0, 1.0)]})
    with pytest.raises(UserError, match="different numbers of seeds"):
        curve_band(uneven, [0])
    mixed = _curves({("op", "a", 0): [(0, 1.0)], ("ppo", "a", 0): [(0, 1.0)]})
    with pytest.raises(ValueError, match="one method"):
        curve_band(mixed, [0])


def test_common_grid_thins_but_keeps_ends() -> None:
    curves = _curves({("op", "a", 0): [(x, 0.0) for x in range(1000)]})
    grid = common_grid(curves, max_points=50)
    assert len(grid) <= 50 and grid[0] == 0 and grid[-1] == 999


def test_natural_task_order() -> None:
    assert sorted(["t/10", "t/2", "t/1"], key=natural_key) == ["t/1", "t/2", "t/10"]


# ---------------------------------------------------------------------------------------- reaching


def test_steps_to_reach_hand_example() -> None:
    curve = ([0, 10, 20, 30, 40], [0.0, 5.0, 4.0, np.nan, 9.0])
    assert steps_to_reach(curve, 5.0) == 10
    assert steps_to_reach(curve, 4.5) == 10
    assert steps_to_reach(curve, 6.0) == 40  # the NaN point never counts as reached
    assert steps_to_reach(curve, -1.0) == 0


def test_steps_to_reach_never() -> None:
    assert steps_to_reach(([0, 10], [1.0, 2.0]), 3.0) == math.inf


def test_reach_ratio_against_teacher() -> None:
    def band(values: list[float]) -> Band:
        v = np.array(values)
        return Band("m", np.array([0.0, 10, 20, 30, 40]), v, v, v, n_tasks=1, n_seeds=1)

    teacher = band([0, 2, 4, 6, 8])
    fast = band([0, 6, 7, 8, 9])
    # Teacher's return at budget 30 is 6, reached at 30; the fast method reaches 6 at 10 -> ratio 1/3.
    assert reach_ratio(fast, teacher, budget=30) == pytest.approx(1 / 3)
    assert reach_ratio(fast, teacher, budget=35) == pytest.approx(1 / 3)  # step-wise: budget 35 reads step 30
    assert reach_ratio(band([0, 0, 0, 0, 0]), teacher, budget=30) == math.inf
    assert math.isnan(reach_ratio(fast, teacher, budget=-1))


# ------------------------------------------------------------------------------ normalized scores


def _by_run(table: np.ndarray) -> dict[tuple[str, int], float]:
    """Per-run scores from a [runs, tasks] array (rliable's layout): run s of task t is (f"t{t}", s)."""
    return {(f"t{t}", s): float(table[s, t]) for t in range(table.shape[1]) for s in range(table.shape[0])}


def _one_line(exc: pytest.ExceptionInfo[UserError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_normalize_hand_example() -> None:
    np.testing.assert_allclose(normalize([0.0, 5.0, 10.0, 25.0], start=5.0, reference=15.0), [-0.5, 0.0, 0.5, 2.0])


@pytest.mark.parametrize(("start", "reference"), [(5.0, 5.0), (5.0, 1.0), (0.0, math.nan), (-math.inf, 1.0)])
def test_normalize_refuses_reference_not_above_start(start: float, reference: float) -> None:
    with pytest.raises(UserError, match="does not exceed") as exc:
        normalize([1.0], start, reference)
    _one_line(exc)


def test_normalize_curves_per_task_and_refuses_a_table_that_misses_tasks() -> None:
    curves = _curves({("op", "a", 0): [(0, 10.0), (5, 30.0)], ("op", "b", 0): [(0, -100.0), (5, 0.0)]})
    scores = normalize_curves(curves, {"a": (10.0, 50.0), "b": (-100.0, 100.0), "unused": (0.0, 1.0)})
    np.testing.assert_allclose(scores.returns, [0.0, 0.5, 0.0, 0.5])
    np.testing.assert_array_equal(scores.env_steps, curves.env_steps)
    with pytest.raises(UserError, match="does not match the task list") as exc:
        normalize_curves(curves, {"c": (0.0, 1.0)})
    assert "a, b" in _one_line(exc)
    with pytest.raises(UserError, match=r"task 'b'.*does not exceed") as exc:
        normalize_curves(curves, {"a": (10.0, 50.0), "b": (0.0, 0.0)})
    _one_line(exc)


_finite = st.floats(-1e3, 1e3, allow_nan=False)


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(1e-2, 1e2), shift=_finite, returns=st.lists(_finite, min_size=4, max_size=4))
def test_scores_are_invariant_to_an_affine_change_of_one_tasks_returns(
    scale: float, shift: float, returns: list[float]
) -> None:
    # Task "b" reports returns in other units (scale, shift): its scores, and every comparison built on them, stay.
    ret = {("x", 0): returns[0], ("x", 1): returns[1], ("y", 0): returns[2], ("y", 1): returns[3]}
    scales = {"a": (0.0, 100.0), "b": (-50.0, 200.0)}

    def scores(s: float, b: float) -> dict[tuple[str, int], float]:
        runs = {
            (m, t, seed): [(0, r * (s if t == "b" else 1.0) + (b if t == "b" else 0.0))]
            for (m, seed), r in ret.items()
            for t in ("a", "b")
        }
        rescaled = {t: (lo * s + b, hi * s + b) if t == "b" else (lo, hi) for t, (lo, hi) in scales.items()}
        norm = normalize_curves(_curves(runs), rescaled)
        return {(m, t, seed): v for m, t, seed, v in zip(norm.method, norm.task, norm.seed, norm.returns, strict=True)}

    base, moved = scores(1.0, 0.0), scores(scale, shift)
    for key in base:
        assert moved[key] == pytest.approx(base[key], rel=1e-9, abs=1e-9)


def test_scores_at_budgets_read_the_last_evaluation_at_or_before() -> None:
    assert report_budgets(10, 100) == (10.0, 20.0, 40.0, 80.0, 100.0, 400.0)
    curves = _curves({("op", "a", 0): [(5, 0.1), (20, 0.2), (90, 0.3), (100, 0.4)], ("op", "a", 1): [(0, 0.0)]})
    got = scores_at(curves, report_budgets(10, 100))
    assert got[10.0] == {("a", 0): 0.1, ("a", 1): pytest.approx(np.nan, nan_ok=True)}
    assert got[40.0][("a", 0)] == 0.2 and got[80.0][("a", 0)] == 0.2 and got[100.0][("a", 0)] == 0.4
    assert math.isnan(got[400.0][("a", 0)])  # the run stopped at 100: no extrapolation


def test_a_run_that_ends_short_of_the_budget_deploys_its_last_policy_there() -> None:
    """A run whose next batch would not fit stops early; at the budget it is read at its last return, while a run
    that reached the budget is unchanged."""
    curves = _curves({("op", "a", 0): [(0, 0.0), (60, 0.5)], ("op", "a", 1): [(0, 0.0), (50, 0.2), (100, 0.9)]})
    assert math.isnan(scores_at(curves, [100.0])[100.0][("a", 0)])  # scores_at never extrapolates a stopped run
    held = deployed_until(curves, 100.0)
    assert scores_at(held, [100.0])[100.0] == {("a", 0): 0.5, ("a", 1): 0.9}
    assert scores_at(held, [60.0])[60.0] == {("a", 0): 0.5, ("a", 1): 0.2}  # earlier budgets read as before


# ----------------------------------------------------------------------------------- paired scores


X = {("a", 0): 1.0, ("a", 1): 3.0, ("b", 0): 5.0, ("b", 1): 5.0}
Y = {("a", 0): 2.0, ("a", 1): 2.0, ("b", 0): 1.0, ("b", 1): 1.0}


def test_paired_difference_hand_example() -> None:
    # Differences: a -> -1, +1; b -> +4, +4. Mean 2.
    est = paired_difference(pair(X, Y), reps=2_000, seed=0)
    assert est.value == pytest.approx(2.0)
    assert (est.n_tasks, est.n_runs) == (2, 4)
    # The extreme replicates draw task a (mean of resampled -1/+1 in [-1, 1]) or b twice (4): both lie near the ends.
    assert -1.0 <= est.lo < est.value < est.hi <= 4.0
    # A constant difference has no spread to resample.
    shifted = {k: v + 0.25 for k, v in Y.items()}
    assert paired_difference(pair(shifted, Y), reps=500)[:3] == (0.25, 0.25, 0.25)


def test_two_level_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(0)
    x, y = _by_run(rng.normal(size=(3, 5))), _by_run(rng.normal(size=(3, 5)))
    p = pair(x, y)
    for f in (paired_difference, probability_of_improvement):
        assert f(p, reps=1_000, seed=3) == f(p, reps=1_000, seed=3)
        assert f(p, reps=1_000, seed=3) != f(p, reps=1_000, seed=4)
    np.random.seed(1)
    a = score_ci(x, "iqm", reps=1_000, seed=3)
    np.random.seed(2)
    assert score_ci(x, "iqm", reps=1_000, seed=3) == a


def test_per_method_scores_and_differences_share_the_resampling() -> None:
    rng = np.random.default_rng(1)
    x = _by_run(rng.normal(size=(3, 6)))
    zero = dict.fromkeys(x, 0.0)
    assert paired_difference(pair(x, zero), reps=1_000, seed=5) == score_ci(x, "mean", reps=1_000, seed=5)


def test_score_ci_point_estimates() -> None:
    assert score_ci(X, "mean", reps=10).value == pytest.approx(3.5)
    assert score_ci(X, "iqm", reps=10).value == pytest.approx(iqm(list(X.values())))  # trims 1 and 5 -> 4
    rng = np.random.default_rng(2)
    table = rng.normal(size=(5, 7))
    assert score_ci(_by_run(table), "iqm", reps=10).value == pytest.approx(iqm(table), abs=1e-12)
    # Unequal seeds per task: every run counts once.
    ragged = {("a", 0): 1.0, ("b", 0): 2.0, ("b", 1): 6.0}
    assert score_ci(ragged, "mean", reps=10).value == pytest.approx(3.0)
    with pytest.raises(ValueError, match="statistic"):
        score_ci(X, "median")


def test_bootstrap_resamples_tasks_not_only_seeds() -> None:
    # One task dominates: seeds agree within each task, so resampling seeds alone (rliable's stratified bootstrap)
    # sees no spread, while redrawing tasks sometimes draws the dominant task twice.
    table = np.zeros((3, 4))
    table[:, 0] = 10.0
    seeds_only = iqm_ci(table, reps=1_000, seed=0)
    assert seeds_only.hi - seeds_only.lo == 0.0
    both = score_ci(_by_run(table), "iqm", reps=1_000, seed=0)
    assert both.value == seeds_only.iqm == 0.0
    assert both.hi >= 5.0
    # With noise within tasks too, the two-level CI of the mean is still the wider one.
    noisy = table + np.random.default_rng(3).normal(scale=0.5, size=table.shape)
    flat = noisy - noisy.mean(axis=0) + noisy.mean()  # the same seed noise, without the task effect
    wide, narrow = score_ci(_by_run(noisy), reps=2_000), score_ci(_by_run(flat), reps=2_000)
    assert wide.hi - wide.lo > 3 * (narrow.hi - narrow.lo)


def test_pairing_refuses_unmatched_runs_unless_asked() -> None:
    partial = {k: v for k, v in Y.items() if k != ("b", 1)} | {("c", 0): 0.0}
    with pytest.raises(UserError, match=r"runs do not match.*\(b, 1\).*\(c, 0\).*intersection.*3 shared") as exc:
        pair(X, partial)
    _one_line(exc)
    shared = pair(X, partial, subset=PAIR_ON_INTERSECTION)
    assert shared.n_pairs == 3 and shared.tasks == ("a", "b") and shared.seeds == ((0, 1), (0,))
    est = paired_difference(shared, reps=200)
    assert est.n_runs == 3 and est.value == pytest.approx((-1 + 1 + 4) / 3)
    chosen = pair(X, Y, subset=[("a", 0), ("b", 0)])
    assert chosen.n_pairs == 2
    with pytest.raises(UserError, match=r"missing from a method: \(c, 0\)") as exc:
        pair(X, partial, subset=[("a", 0), ("c", 0)])
    _one_line(exc)
    with pytest.raises(UserError, match="no score") as exc:
        pair(X | {("a", 0): math.nan}, Y)
    _one_line(exc)


def test_probability_of_improvement_hand_example() -> None:
    # Task a: x {1, 3} vs y {2, 2}: 2 of 4 comparisons won -> 0.5. Task b: x {5, 5} vs y {1, 1} -> 1. Mean 0.75.
    est = probability_of_improvement(pair(X, Y), reps=2_000)
    assert est.value == pytest.approx(0.75)
    assert 0.0 <= est.lo < est.value < est.hi <= 1.0
    same = probability_of_improvement(pair(X, X), reps=200)
    assert same[:3] == (0.5, 0.5, 0.5)  # ties count half


@pytest.mark.parametrize("ties", [False, True])
def test_probability_of_improvement_matches_rliable(ties: bool) -> None:
    metrics = pytest.importorskip("rliable.metrics")
    rng = np.random.default_rng(4 + ties)
    for _ in range(25):
        shape = (int(rng.integers(1, 7)), int(rng.integers(1, 6)))
        if ties:
            x, y = (rng.integers(0, 3, size=shape).astype(float) for _ in range(2))
        else:
            x, y = rng.normal(size=shape), rng.normal(size=shape)
        ours = probability_of_improvement(pair(_by_run(x), _by_run(y)), reps=1).value
        assert ours == pytest.approx(float(metrics.probability_of_improvement(x, y)), abs=1e-12)


# ------------------------------------------------------------------------------- steps to best peer


def _grid_curves(method: str, per_task: dict[str, list[float]], seeds: int = 2) -> Curves:
    """Normalized curves evaluated at steps 0, 10, 20, 30; every seed of a task has the same values."""
    return _curves(
        {(method, t, s): list(zip((0, 10, 20, 30), v, strict=True)) for t, v in per_task.items() for s in range(seeds)}
    )


def test_steps_to_best_peer_hand_example() -> None:
    peer = _grid_curves("sac", {"a": [0, 0.1, 0.3, 0.5], "b": [0, 0.1, 0.3, 0.5]})
    fast = _grid_curves("op", {"a": [0, 0.2, 0.6, 1.0], "b": [0, 0.2, 0.6, 1.0]})
    # The peer's mean at B = 30 is 0.5; the method's mean first reaches it at 20.
    assert steps_to_best_peer(fast, peer, budget=30, reps=300)[:3] == (2 / 3, 2 / 3, 2 / 3)
    # Read at an earlier budget the target is lower (0.1 at B = 10): reached at 10, so exactly 1.
    assert steps_to_best_peer(fast, peer, budget=10, reps=300).value == pytest.approx(1.0)


def test_steps_to_best_peer_never_reached_is_inf() -> None:
    peer = _grid_curves("sac", {"a": [0, 0.4, 0.4, 0.4], "b": [0, 0.4, 0.4, 0.4]})
    slow = _grid_curves("op", {"a": [0, 0.1, 0.2, 0.3], "b": [0, 0.1, 0.2, 0.3]})
    assert steps_to_best_peer(slow, peer, budget=30, reps=200)[:3] == (math.inf, math.inf, math.inf)
    # Task a reaches at once, b never: the mean (0.5) reaches at 10, but replicates that draw b twice never do.
    split = _grid_curves("op", {"a": [0, 1, 1, 1], "b": [0, 0, 0, 0]})
    est = steps_to_best_peer(split, peer, budget=30, reps=2_000, seed=0)
    assert est.value == pytest.approx(1 / 3)
    assert est.lo == pytest.approx(1 / 3) and est.hi == math.inf
    assert steps_to_best_peer(split, peer, budget=30, reps=2_000, seed=0) == est


def test_steps_to_best_peer_pairs_runs_and_needs_the_peers_score_at_budget() -> None:
    peer = _grid_curves("sac", {"a": [0, 0.4, 0.4, 0.4]}, seeds=1)
    method = _grid_curves("op", {"a": [0, 1, 1, 1], "b": [0, 1, 1, 1]})
    with pytest.raises(UserError, match="runs do not match") as exc:
        steps_to_best_peer(method, peer, budget=30)
    _one_line(exc)
    est = steps_to_best_peer(method, peer, budget=30, subset=PAIR_ON_INTERSECTION, reps=100)
    assert (est.value, est.n_tasks, est.n_runs) == (1 / 3, 1, 1)
    with pytest.raises(UserError, match="no score at budget 40") as exc:
        steps_to_best_peer(method, peer, budget=40, subset=PAIR_ON_INTERSECTION)
    _one_line(exc)
