"""The guard: roll back on a drop, deploy only verified gains."""

from __future__ import annotations

from dataclasses import dataclass

from metaimprove.evaluation.guard import Guard, Point, guarded_steps


@dataclass
class _Batch:
    """A stand-in experience: its score is the quality of the policy that collected it."""

    quality: float
    n_steps: int = 10


def _guarded(deltas: list[float], guard: Guard | None, budget: int, fallback=None, luck=lambda q: 0.0) -> list[Point]:
    """guarded_steps on stand-in policies: numbers (their true quality), improved by ``deltas`` in turn; a batch
    scores the quality plus ``luck(quality)``; verification reads the true quality."""
    steps = iter(deltas)
    return list(guarded_steps(0.0, lambda p, _: _Batch(p + luck(p)), lambda p, _: p + next(steps),  # type: ignore[arg-type]
                              fallback, lambda b: b.quality, guard, batch=lambda _: 10,  # type: ignore[attr-defined]
                              budget=budget))


def _guard(threshold: float, margin: float) -> Guard:
    return Guard(threshold, verify=lambda p: p, verify_steps=5, margin=margin)  # type: ignore[arg-type,return-value]


def test_guard_rolls_back_on_a_forced_drop_and_deploys_only_verified_gains() -> None:
    # The operator improves by 1 except at its 3rd step, a forced drop.
    calls: list[tuple[float, int, int]] = []

    def fallback(best: float, remaining: int, n: int) -> tuple[float, int]:
        calls.append((best, remaining, n))
        return best + 0.5, 10

    points = _guarded([1.0, 1.0, -50.0, 1.0, 1.0, 1.0], _guard(5.0, margin=0.5), budget=100, fallback=fallback)
    # θ⁰ = 0 is verified first (5 steps). Batches of 1 and 2 are new bests: each is verified (5 steps) and
    # deployed. The batch of -48 triggers the rollback to 2 and a teacher step (2.5, 10 steps). 2.5's batch is a
    # new best but beats the deployed 2 by only 0.5, not more: kept out. 3.5 is deployed; 4.5 never collects.
    assert [p.policy for p in points] == [0.0, 1.0, 2.0, 2.0, 2.0, 3.5]
    assert [p.steps for p in points] == [15, 30, 45, 65, 80, 95]
    assert [p.guard_steps for p in points] == [5, 10, 15, 15, 20, 25]
    assert [p.fallbacks for p in points] == [0, 0, 0, 1, 1, 1]
    assert calls == [(2.0, 45, 0)]
    unguarded = _guarded([1.0, 1.0, -50.0, 1.0, 1.0, 1.0, 1.0], None, budget=70)
    assert [p.policy for p in unguarded] == [1.0, 2.0, -48.0, -47.0, -46.0, -45.0, -44.0]
    assert all(p.guard_steps == 0 and p.fallbacks == 0 for p in unguarded)


def test_guard_never_deploys_a_worse_policy_on_a_lucky_batch() -> None:
    # Each step makes the policy worse, but worse policies collect lucky batches that score ever higher: the
    # rollback never fires and every batch is a new best; verification alone keeps θ⁰ deployed.
    points = _guarded([-3.0, 1.0, 1.0, 1.0], _guard(100.0, margin=0.0), budget=60, luck=lambda q: 40 + 10 * q
                      if q < 0 else 0.0)
    assert [p.policy for p in points] == [0.0, 0.0, 0.0, 0.0]
    assert points[-1].guard_steps == 5 * 4  # θ⁰ and each of the three new-best policies
    # A budget with no room for verifying θ⁰ and a batch deploys θ⁰ throughout, unverified and never replaced.
    assert [p.policy for p in _guarded([5.0, 5.0], _guard(100.0, margin=0.0), budget=12)] == [0.0]
