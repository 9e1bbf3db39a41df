"""Interval estimates: IQM by hand, CI coverage/shrinkage/determinism, step interpolation, steps to reach."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metaimprove.errors import UserError
from metaimprove.evaluation.stats import (
    Band,
    Curves,
    common_grid,
    curve_band,
    iqm,
    iqm_ci,
    natural_key,
    reach_ratio,
    step_values,
    steps_to_reach,
)


def _curves(runs: dict[tuple[str, str, int], list[tuple[float, float]]]) -> Curves:
    """Curves from {(method, task, seed): [(env_steps, return), ...]}."""
    return Curves.from_records(
        {"method": m, "task": t, "seed": s, "env_steps": x, "return": r}
        for (m, t, s), points in runs.items()
        for x, r in points
    )


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


def test_ci_matches_rliable_when_it_imports() -> None:
    try:
        from rliable import library, metrics
    except Exception as exc:  # rliable.library breaks on some arch/pandas combinations
        pytest.skip(f"rliable.library does not import here: {exc!r}")
    x = np.random.default_rng(3).normal(size=(7, 4))
    np.random.seed(5)  # rliable draws from the global RNG
    _, ci = library.get_interval_estimates({"m": x}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=500)
    e = iqm_ci(x, reps=500, seed=5)
    np.testing.assert_allclose([e.lo, e.hi], ci["m"].ravel(), rtol=1e-12)


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
