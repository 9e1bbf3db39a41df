"""A run's improvement loop, plain or guarded against drops: the points a run deploys as it spends its budget."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from metaimprove.sim.policy import Policy
from metaimprove.sim.rollout import Experience


class Point(NamedTuple):
    """One point of a run: the env steps used so far and the policy the run deploys after them."""

    steps: int
    policy: Policy
    fallbacks: int = 0
    """guarded runs: rollbacks to a teacher step so far"""
    guard_steps: int = 0
    """guarded runs: env steps spent so far verifying policies before deploying them"""


@dataclass(frozen=True)
class Guard:
    """How :func:`guarded_steps` protects a run."""

    threshold: float
    """roll back when a batch of a new operator policy scores this much below the best batch so far"""
    verify: Callable[[Policy], float]
    """a policy's return on the run's verification episodes (deterministic, the same episodes every time)"""
    verify_steps: int
    """env steps one verification costs"""
    margin: float
    """a verified policy replaces the deployed one only when its verified return beats that one's by this much"""


def guarded_steps(start: Policy, collect: Callable[[Policy, int], Experience],
                  update: Callable[[Policy, Experience], Policy],
                  fallback: Callable[[Policy, int, int], tuple[Policy, int]],
                  score: Callable[[Experience], float], guard: Guard | None, batch: Callable[[int], int],
                  budget: int) -> Iterator[Point]:
    """Improve ``start`` with ``update`` one collected batch at a time; with ``guard``, protected against drops.

    Each step collects a batch with the current policy (``collect(policy, env steps so far)``, ``batch(env steps
    so far)`` env steps) and ``update`` takes the step from it. With a guard:

    * rollback: if the current policy came from ``update`` and its batch scores more than ``guard.threshold``
      below the best batch so far, the step instead rolls back to the policy of that best batch and calls
      ``fallback(best, remaining_env_steps, n)`` (n: fallbacks before this one) for a teacher step, which
      returns the new policy and the env steps it used;
    * deployment: batches are stochastic and a batch's score is a noisy, upward-selected estimate, while a
      run is judged by its deterministic policy. So the run deploys ``start`` (verified first) until a policy
      whose batch is a new best is verified with ``guard.verify`` and beats the deployed one's verified return
      by ``guard.margin``. Verifications are charged to the env steps, and skipped when they would not fit in
      ``budget`` (the deployed policy then stays).

    Without a guard every point deploys the newest policy (the plain operator). Stops when the next batch
    would exceed ``budget``. Yields one :class:`Point` (the deployed policy) per step.
    """
    policy, steps, fallbacks, guard_steps = start, 0, 0, 0

    def verify(candidate: Policy, guard: Guard) -> float:
        nonlocal steps, guard_steps
        steps += guard.verify_steps
        guard_steps += guard.verify_steps
        return guard.verify(candidate)

    deployed, deployed_value = start, math.inf  # a start that cannot be verified is never replaced
    if guard is not None and guard.verify_steps + batch(0) <= budget:
        deployed_value = verify(start, guard)
    best: tuple[float, Policy] | None = None
    from_update = unverified = False
    while steps + batch(steps) <= budget:
        exp = collect(policy, steps)
        steps += exp.n_steps
        value = score(exp)
        if guard is not None and from_update and best is not None and value < best[0] - guard.threshold:
            policy, used = fallback(best[1], budget - steps, fallbacks)
            steps += used
            fallbacks += 1
            from_update, unverified = False, used > 0
        else:
            if best is None or value > best[0]:
                best = (value, policy)
                if guard is not None and unverified and steps + guard.verify_steps <= budget:
                    verified = verify(policy, guard)
                    if verified > deployed_value + guard.margin:
                        deployed, deployed_value = policy, verified
            policy = update(policy, exp)
            from_update = unverified = True
        yield Point(steps, policy if guard is None else deployed, fallbacks, guard_steps)
